"""tiktoken as a byte-level BPE tokenizer's twin: the same ids as Hugging Face, or not used at all."""
import random

import pytest

pytest.importorskip("tiktoken")
tokenizers = pytest.importorskip("tokenizers")

from retrieval.generative.tiktoken_bpe import TiktokenBPE, byte_alphabet  # noqa: E402


def hf_ids(backend, texts):
    return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]


def byte_level_bpe(vocab: dict[str, int], merges: list[tuple[str, str]]):
    """A Hugging Face tokenizer laid out as GPT-2's: ByteLevel pre-tokenizer with its regex, BPE, no normaliser."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.BPE(vocab, merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def test_a_token_that_hugging_face_never_makes_is_left_out_of_tiktokens_ranks():
    # "abc" is made by merging ("ab", "c"), but on "abc" the earlier merge ("b", "c") wins, and ("a", "bc") is no
    # merge: Hugging Face gives [a, bc]. tiktoken takes a whole word that is in its ranks as it is, and joins any
    # adjacent pair that spells a token, so with "abc" ranked it would give [abc].
    alphabet = {ch: i for i, ch in enumerate(sorted(byte_alphabet()))}
    vocab = {**alphabet, "bc": 256, "ab": 257, "abc": 258}
    backend = byte_level_bpe(vocab, [("b", "c"), ("a", "b"), ("ab", "c")])
    texts = ["abc", "xabcx abc", "ab c abc"]
    expected = hf_ids(backend, texts)
    assert expected[0] == [alphabet["a"], 256]
    twin = TiktokenBPE.for_tokenizer(backend)
    assert twin is not None and twin.encode_batch(texts) == expected
    assert twin.encoding.encode_single_token(b"ab") == 257  # kept: Hugging Face makes it
    with pytest.raises(KeyError):
        twin.encoding.encode_single_token(b"abc")  # left out


def test_merges_out_of_id_order_or_another_layout_get_no_twin():
    alphabet = {ch: i for i, ch in enumerate(sorted(byte_alphabet()))}
    # merge 0 makes id 257, merge 1 id 256: tiktoken would rank them the other way round
    assert TiktokenBPE.for_tokenizer(byte_level_bpe({**alphabet, "ab": 257, "bc": 256}, [("a", "b"), ("b", "c")])) is None
    from tokenizers import normalizers

    lowered = byte_level_bpe({**alphabet, "ab": 256}, [("a", "b")])
    lowered.normalizer = normalizers.Lowercase()
    assert TiktokenBPE.for_tokenizer(lowered) is None


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoTokenizer

    from retrieval.models import ModelNotAvailable, smollm2_folder

    try:
        return AutoTokenizer.from_pretrained(str(smollm2_folder())).backend_tokenizer
    except ModelNotAvailable as error:
        pytest.skip(str(error))


def test_smollm2_ids_equal_hugging_faces_on_real_text_and_odd_cases(smollm2):
    from retrieval.data import load_corpus, shared_data

    corpus = load_corpus(shared_data("scifact"))
    texts = [" " + f"{d.title} {d.text}".strip() for d in list(corpus)[:400]]
    rng = random.Random(0)
    alphabet = [chr(c) for c in [*range(32, 0x250), *range(0x370, 0x4ff), *range(0x4e00, 0x4e40), *range(0x1F600, 0x1F640),
                                 0x200B, 0x3000, 0xA0, 0x2028, 0x85, 0xFEFF]] + [" ", "   ", "\n", "\t", "'s", "'LL", "2026"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(2000)]
    texts += [
        " it's <|endoftext|> here",  # an added token: Hugging Face splits it out
        "!\x04!",  # a byte SmolLM2 lacks between two marks: Hugging Face drops it and may merge across
        " \x06\x13 tabs\t\tand  spaces   \n\n",
        "",
        " 1234567890 3.14159 1e-10",
    ]
    twin = TiktokenBPE.for_tokenizer(smollm2)
    assert twin is not None
    assert twin.encode_batch(texts) == hf_ids(smollm2, texts)


def test_the_key_model_tokenises_byte_level_bpe_with_tiktoken_and_wordpiece_without(smollm2, tmp_path):
    from test_keymodel import tiny_model_folder

    from retrieval.generative.keymodel import KeyModel

    texts = ["Aspirin lowers the risk of heart attacks.", "<|im_start|> a special token", "naïve café résumé"]
    for family, twin in (("llama", True), ("bart", False)):  # SmolLM2's byte-level BPE; MiniLM's WordPiece
        km = KeyModel.create(tiny_model_folder(family, tmp_path / family))
        assert km.tokens_batch(texts) == [km.tokens(t) for t in texts]
        assert bool(km._tiktoken) is twin
