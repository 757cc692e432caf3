"""The generative key model over any Hugging Face LM family: tiny random GPT-2, Llama, BART and T5 models built
from configs (no download), each through layout, generation, scoring, training, LoRA, save and reload.

The cached decoding (`KeyModel.context` + `extend`: the prompt read once, one new token per beam and step)
is pinned against Hugging Face `generate` + `KeyRecorder` (which re-reads the prompt) on every family."""
import copy
import json

import pytest
import torch

from indexes.fmindex import FMIndex
from indexes.manifest import IndexSaveError
from retrieval.generative.constrained import IndexConstraint, KeyRecorder, diverse_beam_search
from retrieval.generative.keymodel import KeyModel

DOCS = ["vitamin c deficiency causes scurvy in sailors", "aspirin lowers the risk of heart attacks",
        "red blood cells carry oxygen from the lungs", "insulin regulates blood sugar in the body"]
FAMILIES = ("gpt2", "llama", "bart", "t5")


def tiny_model_folder(family: str, folder) -> str:
    """A random 1-2 layer model of `family` with MiniLM's tokenizer (or SmolLM2's byte-level BPE for Llama),
    saved as a Hugging Face folder."""
    from transformers import (AutoTokenizer, BartConfig, BartForConditionalGeneration, GPT2Config, GPT2LMHeadModel,
                              LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration)

    from retrieval.models import model_path, smollm2_folder

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_folder() if family == "llama" else model_path("minilm")))
    vocab = len(tokenizer)
    pad, eos = tokenizer.pad_token_id or 0, tokenizer.eos_token_id or tokenizer.sep_token_id
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=256,
                                           bos_token_id=eos, eos_token_id=eos))
    elif family == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                             pad_token_id=pad, eos_token_id=eos))
    elif family == "bart":
        model = BartForConditionalGeneration(BartConfig(vocab_size=vocab, d_model=32, encoder_layers=1, decoder_layers=1,
                                                        encoder_attention_heads=2, decoder_attention_heads=2,
                                                        encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256,
                                                        pad_token_id=pad, eos_token_id=eos, bos_token_id=tokenizer.cls_token_id,
                                                        decoder_start_token_id=tokenizer.cls_token_id, forced_eos_token_id=None))
    else:
        model = T5ForConditionalGeneration(T5Config(vocab_size=vocab, d_model=32, d_kv=16, d_ff=64, num_layers=1,
                                                    num_heads=2, pad_token_id=pad, eos_token_id=eos,
                                                    decoder_start_token_id=pad))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, tmp_path_factory):
    folder = tiny_model_folder(request.param, tmp_path_factory.mktemp(request.param))
    return request.param, folder, KeyModel.create(folder, layout="oneshot")


def test_the_family_is_read_from_the_config(family_model):
    family, _, km = family_model
    assert km.causal == (family in ("gpt2", "llama"))
    assert km.backbone == family
    assert km.leading_space == (family == "llama")  # byte-level BPE spells a word after a space differently


def test_batched_tokens_equal_one_call_per_text(family_model):
    _, _, km = family_model
    texts = ["Vitamin C cures scurvy.", "  padded  text ", "", "naïve café — 3.5% of 1,000"]
    assert km.tokens_batch(texts) == [km.tokens(t) for t in texts]
    assert km.tokens("") == km.tokens("   ") == km.tokens_batch(["", "  "])[1] == []  # no lone space token for empty text
    long = " ".join(["scurvy sailors"] * 100)
    km.tokenizer([long], truncation=True, max_length=8, padding="max_length")  # a caller that cuts and pads
    assert km.tokens_batch([long, "short"]) == [km.tokens(long), km.tokens("short")]  # corpus text is never cut


def test_the_layout_puts_the_truncated_query_in_its_template(family_model):
    _, _, km = family_model
    km.max_source_tokens = 40
    def text(source):  # MiniLM's tokenizer lower-cases and spaces punctuation: compare without either
        return "".join(km.tokenizer.decode(km._source_ids(source), skip_special_tokens=True).lower().split())

    body = text("what causes scurvy || body")
    assert body.endswith("question:whatcausesscurvy\naphrasefromapassagethatanswersit:".replace("\n", ""))
    assert "||" not in body and "titleofanarticle" in text("what causes scurvy || title")
    long = km._source_ids(" ".join(["scurvy"] * 200) + " || body")
    template = len(km._source_ids(" || body"))  # the template alone
    assert len(long) - template <= 40  # only the query was cut
    km.max_source_tokens = 64


def test_cached_beam_search_finds_the_keys_of_hugging_faces_generate(family_model):
    """The same candidates with the same log-probabilities: the prompt read once and one token fed per beam
    and step (diverse_beam_search, one group) against `generate`, which re-reads every prompt."""
    _, _, km = family_model
    fm = FMIndex.build([km.tokens(d) for d in DOCS])
    sources = ["what causes scurvy || body", "blood sugar || body"]
    constraint = IndexConstraint(fm, km.eos_id, vocab_size=km.vocab_size)
    recorder = KeyRecorder(4, km.eos_id, km.pad_id)
    km.generate(sources, num_beams=4, max_new_tokens=5, allowed=constraint, recorder=recorder)
    ours = diverse_beam_search(km, sources, num_beams=4, max_new_tokens=5,
                               allowed=IndexConstraint(fm, km.eos_id, vocab_size=km.vocab_size))
    for theirs, mine in zip(recorder.keys, ours):
        assert set(theirs) == set(mine)
        assert all(mine[k] == pytest.approx(theirs[k], abs=1e-4) for k in theirs)
        assert all(fm.count([t for t in k if t != km.eos_id]) > 0 for k in mine)  # eos: forced at a document end


def test_sources_of_different_lengths_and_anchors_decode_together_as_apart(family_model):
    """One beam search over a body source (5 tokens) and a title source (anchored at a document start, 3 tokens),
    as SEAL decodes a query, finds what each source's own search finds."""
    _, _, km = family_model
    fm = FMIndex.build([km.tokens(d) for d in DOCS])
    body, title = "what causes scurvy || body", "what causes scurvy || title"
    anchors = {(): IndexConstraint(fm, km.eos_id, vocab_size=km.vocab_size),
               (FMIndex.BOUNDARY,): IndexConstraint(fm, km.eos_id, force_prefix=(FMIndex.BOUNDARY,), vocab_size=km.vocab_size)}
    per_source = [(), (FMIndex.BOUNDARY,)]
    together = diverse_beam_search(km, [body, title], num_beams=4, max_new_tokens=[5, 3],
                                   allowed=lambda b, prefix: anchors[per_source[b]](b, prefix))
    apart = [diverse_beam_search(km, [source], num_beams=4, max_new_tokens=length, allowed=anchors[anchor])[0]
             for source, length, anchor in ((body, 5, ()), (title, 3, (FMIndex.BOUNDARY,)))]
    for mine, theirs in zip(together, apart):
        assert set(mine) == set(theirs)
        assert all(mine[k] == pytest.approx(theirs[k], abs=1e-4) for k in theirs)
    assert max(map(len, together[0])) == 5 and max(map(len, together[1])) <= 3


def test_scores_from_the_read_once_source_equal_a_full_forward(family_model):
    """score_keys (keys continuing the cached source) == the sum of target_logprobs (one full forward)."""
    _, _, km = family_model
    keys = [km.tokens("scurvy"), km.tokens("heart attacks in sailors"), km.tokens("oxygen")]
    cached = km.score_keys("what causes scurvy || body", keys)
    full, _ = km.target_logprobs(["what causes scurvy || body"] * 3, keys)
    assert cached == pytest.approx(full.sum(1).tolist(), abs=1e-4)
    first = km.first_token_logprobs("what causes scurvy || body")
    assert first[keys[0][0]] == pytest.approx(float(full[0, 0]), abs=1e-4)


def test_label_smoothing_is_fairseqs_label_smoothed_cross_entropy(family_model):
    """eps 0.1 (the reference's criterion), computed by hand from the full log-softmax: the target weighs
    1 - eps - eps_i plus eps_i from the vocabulary sum, every other token eps_i = eps / (V - 1)."""
    _, _, km = family_model
    sources = ["what causes scurvy || body", "aspirin"]
    targets = [km.tokens("vitamin c deficiency") + [km.eos_id], km.tokens("heart") + [km.eos_id]]
    with torch.no_grad():
        logprobs, mask = km.target_logprobs(sources, targets)
        full, _, _ = km.target_distributions(sources, targets)
        sums = full.sum(-1).masked_fill(~mask, 0.0)
        plain, smoothed = km.loss(sources, targets).item(), km.loss(sources, targets, label_smoothing=0.1).item()
    tokens = int(mask.sum())
    nll, uniform = -float(logprobs.sum()) / tokens, -float(sums.sum()) / tokens
    eps_i = 0.1 / (km.vocab_size - 1)
    assert plain == pytest.approx(nll, rel=1e-5)
    assert smoothed == pytest.approx((1 - 0.1 - eps_i) * nll + eps_i * uniform, rel=1e-5)
    assert abs(smoothed - plain) > 1e-5  # near-uniform random models: small, but not nothing
    # the vocabulary sum at the first position, against the read-once source path (another forward)
    assert float(sums[0, 0]) == pytest.approx(float(km.first_token_logprobs(sources[0]).sum()), rel=1e-4)


def test_training_saving_and_reloading(family_model, tmp_path):
    from training.keymodel_train import train_keymodel
    from training.seal import DEFAULTS

    _, folder, base = family_model
    km = copy.deepcopy(base)
    examples = [("what causes scurvy || body", "vitamin c deficiency")] * 8
    target = [km.tokens(examples[0][1]) + [km.eos_id]]
    before = km.loss([examples[0][0]], target).item()
    train_keymodel(km, examples, {**DEFAULTS, "max_steps": 12, "batch_size": 8, "lr": 3e-3, "epochs": 100}, progress=False)
    assert km.loss([examples[0][0]], target).item() < before - 1.0
    assert km.owns_weights  # trained fully: its weights are written
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "config.json").write_text("{}")
    with pytest.raises(IndexSaveError, match="no keymodel.json"):  # a folder of someone else's files
        km.save(tmp_path / "user")
    assert (tmp_path / "user" / "config.json").read_text() == "{}"
    km.save(tmp_path / "km")
    km.save(tmp_path / "km")  # over its own save
    again = KeyModel.load(tmp_path / "km")
    assert again.templates == km.templates and again.causal == km.causal
    assert again.score_keys(examples[0][0], target) == pytest.approx(km.score_keys(examples[0][0], target), abs=1e-5)


def test_an_untrained_model_saves_a_reference_not_a_copy(family_model, tmp_path):
    _, folder, km = family_model
    km.save(tmp_path / "ref")
    assert not list((tmp_path / "ref").glob("*.safetensors"))
    config = json.loads((tmp_path / "ref" / "keymodel.json").read_text())
    assert config["base"] == folder and config["weights"] == "base" and len(config["base_sha256"]) == 64
    again = KeyModel.load(tmp_path / "ref")
    source, keys = "blood sugar || body", [km.tokens("insulin regulates")]
    assert again.score_keys(source, keys) == pytest.approx(km.score_keys(source, keys), abs=1e-6)


def test_lora_trains_adapters_only_and_saves_them_beside_the_base_reference(family_model, tmp_path):
    from training.keymodel_train import train_keymodel
    from training.seal import DEFAULTS

    family, folder, base = family_model
    km = KeyModel.create(folder, layout="oneshot")
    targets = {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"], "bart": ["q_proj", "v_proj", "fc1", "fc2"],
               "t5": ["q", "v", "wi", "wo"]}[family]  # a 1-layer random seq2seq barely listens to attention alone
    km.add_lora(r=4, alpha=8, targets=targets)
    frozen = {n: p.detach().clone() for n, p in km.model.named_parameters() if "lora_" not in n}
    examples = [("what causes scurvy || body", "vitamin c deficiency")] * 8
    target = [km.tokens(examples[0][1]) + [km.eos_id]]
    before = km.loss([examples[0][0]], target).item()
    info = train_keymodel(km, examples, {**DEFAULTS, "max_steps": 15, "batch_size": 8, "lr": 1e-2, "epochs": 100},
                          progress=False)
    assert km.loss([examples[0][0]], target).item() < before - 0.1
    assert 0 < info["trainable_parameters"] < sum(p.numel() for p in frozen.values()) / 10
    assert all(torch.equal(p, frozen[n]) for n, p in km.model.named_parameters() if "lora_" not in n)
    km.save(tmp_path / "lora")
    files = {p.name for p in (tmp_path / "lora").iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    again = KeyModel.load(tmp_path / "lora")
    assert again.lora == km.lora
    lora_layers = [m for m in again.model.modules() if hasattr(m, "lora_A")]
    assert lora_layers and all(m.merged for m in lora_layers)  # folded into the base weights for search
    assert again.score_keys(examples[0][0], target) == pytest.approx(km.score_keys(examples[0][0], target), abs=1e-5)
    again.save(tmp_path / "again")  # a loaded (merged) model still saves its adapters alone, unchanged
    assert {p.name for p in (tmp_path / "again").iterdir()} == files
    third = KeyModel.load(tmp_path / "again")
    assert third.score_keys(examples[0][0], target) == pytest.approx(km.score_keys(examples[0][0], target), abs=1e-5)


def test_a_changed_base_model_is_refused(tmp_path):
    folder = tiny_model_folder("gpt2", tmp_path / "base")
    KeyModel.create(folder).save(tmp_path / "ref")
    tiny_model_folder("bart", tmp_path / "base")  # another model at the same path
    with pytest.raises(ValueError, match="is not the one this key model was saved with"):
        KeyModel.load(tmp_path / "ref")


def test_unknown_layouts_and_bad_templates_are_refused():
    from retrieval.generative.keymodel import layout_templates

    with pytest.raises(ValueError, match="unknown key model layout"):
        layout_templates("fewshot")
    with pytest.raises(ValueError, match="needs a '\\*' entry"):
        layout_templates({"body": "{query}"})
    with pytest.raises(ValueError, match="exactly one of"):
        layout_templates({"*": "no field here"})


def test_whole_word_keys_drop_a_prefix_shared_by_other_words(tmp_path):
    """" Qu" starts " Quokkas", " Quilts" and " Quiches" and ends no word: with whole_words it gives no document
    anything, so only the documents holding " Quokkas" score; without it every " Qu" document does."""
    from retrieval import build_retriever
    from retrieval.data import Corpus, Doc as Document

    corpus = Corpus([Document("a", "", "Geneva likes Quokkas and Quilts"), Document("b", "", "Pate likes Quokkas"),
                     Document("c", "", "Flor likes Quiches"), Document("d", "", "Jon likes Quilts")])
    seal = build_retriever("seal", model=tiny_model_folder("llama", tmp_path / "m"), unigram_scores=False)
    seal.index(corpus)
    km = seal.keymodel
    qu, quokkas = tuple(km.tokens("Quokkas")[:1]), tuple(km.tokens("Quokkas"))
    assert km.tokenizer.convert_ids_to_tokens(list(qu)) == ["ĠQu"] and len(quokkas) > 1
    assert not seal.ends_word(qu) and seal.ends_word(quokkas) and seal.ends_word(tuple(km.tokens("likes")))
    keys = {qu: -0.1, quokkas: -0.5}
    assert set(seal.rank("who likes quokkas", keys, 10)) == {"a", "b", "c", "d"}
    seal.set_search_options(whole_words=True)
    assert set(seal.rank("who likes quokkas", keys, 10)) == {"a", "b"}


def test_content_keys_drop_keys_made_of_stopwords(tmp_path):
    """" the" and " of the" are stopwords only: with content_keys they give no document anything, so only the
    document holding " Quokkas" scores; without it the documents holding " the" score too."""
    from retrieval import build_retriever
    from retrieval.data import Corpus, Doc as Document

    corpus = Corpus([Document("a", "", "Geneva likes Quokkas"), Document("b", "", "Pate likes the end of the road"),
                     Document("c", "", "Flor likes the Quiches")])
    seal = build_retriever("seal", model=tiny_model_folder("llama", tmp_path / "m"), unigram_scores=False)
    seal.index(corpus)
    km = seal.keymodel
    the, of_the, quokkas = (tuple(km.tokens(w)) for w in ("the", "of the", "Quokkas"))
    assert not seal.has_content(the) and not seal.has_content(of_the) and seal.has_content(quokkas)
    assert not seal.has_content(tuple(km.tokens(", ")))
    keys = {the: -0.1, of_the: -0.2, quokkas: -0.5}
    assert set(seal.rank("who likes quokkas", keys, 10)) == {"a", "b", "c"}
    seal.set_search_options(content_keys=True)
    assert set(seal.rank("who likes quokkas", keys, 10)) == {"a"}


def test_bf16_search_runs_and_bad_dtypes_and_second_adapters_are_refused(tmp_path):
    """dtype="bfloat16" casts the key model for search (keys and scores still come out as float32 numbers);
    an unknown dtype and a second set of LoRA adapters are refused by name."""
    from retrieval import build_retriever
    from retrieval.data import Corpus, Doc

    seal = build_retriever("seal", model=tiny_model_folder("llama", tmp_path / "m"), beam=3, length=3, dtype="bfloat16",
                           use_index_frequency=False)  # a random model: LM-only weights are never all 0
    seal.index(Corpus([Doc(str(i), "", text) for i, text in enumerate(DOCS)]))
    run = seal.search({"q": "what causes scurvy"}, k=4)
    assert next(seal.keymodel.model.parameters()).dtype == torch.bfloat16
    assert run["q"] and all(isinstance(score, float) for score in run["q"].values())
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'bfloat16'"):
        seal.keymodel.set_dtype("float16")
    km = seal.keymodel
    km.set_dtype("float32")
    km.add_lora(r=2, alpha=4)
    with pytest.raises(ValueError, match="has LoRA adapters already"):
        km.add_lora(r=2, alpha=4)
