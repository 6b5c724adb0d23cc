"""Prompt tokenisation: choice tokens from the joint encoding (SentencePiece-style tokenisers), fixed few-shot
prompts encoded whole with a shared prefix that is a true token prefix. Tokenisers are built in code."""

import pytest
import torch
from omegaconf import OmegaConf
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from fnet import scoring
from fnet.lit.zeroshot import ZeroShotModule
from fnet.scoring.tasks import get_task, load_task_config


def task_cfg(name, **over):
    return get_task(OmegaConf.merge(load_task_config(name), over))


def sentencepiece_style_tokenizer():
    """A Unigram tokenizer with Llama-2/Gemma's normalizer (prepend "▁", spaces -> "▁"): a text that starts with a
    space starts with a lone "▁" token, so " positive" alone is ["▁", "▁positive"], but after a prompt it is
    ["▁positive"]."""
    pieces = [
        "<unk>",
        "</s>",
        "▁",
        "▁positive",
        "▁negative",
        ":",
        "▁Review",
        "▁great",
        "▁film",
        "▁dull",
        "\n",
        "Sentiment",
    ] + list("abcdefghijklmnopqrstuvwxyzR")
    backend = Tokenizer(models.Unigram([(p, -1.0 if len(p) > 1 else -5.0) for p in pieces], unk_id=0))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<unk>", eos_token="</s>")


def merging_byte_tokenizer():
    """Byte-level BPE (GPT-2 pre-tokenizer) with one merge, "\\n\\n": the shots block alone ends in the merged
    token, but inside a prompt the pre-tokenizer splits "\\n\\nReview" into "\\n", "\\n", "Review" (SmolLM2's
    boundary)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab["<|endoftext|>"] = len(vocab)
    vocab["ĊĊ"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("Ċ", "Ċ")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def tiny_lm(vocab_size):
    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab_size,
            n_positions=256,
            n_embd=32,
            n_layer=2,
            n_head=4,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    ).eval()


def by_hand(model, tokens, n_last):
    """Summed log-probability of the last ``n_last`` tokens of ``tokens`` (one unpadded forward pass)."""
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([tokens])).logits[0].double(), dim=-1)
    return sum(float(log_probs[i - 1, tokens[i]]) for i in range(len(tokens) - n_last, len(tokens)))


def test_choice_tokens_are_the_joint_encoding_minus_the_context():
    tok = sentencepiece_style_tokenizer()
    task = task_cfg("sst2")
    builder = scoring.PromptBuilder(task, tok)
    row = {"index": 0, "text_a": "great film", "label": 1}
    request = builder.request(row)
    ids = dict(zip(tok.convert_ids_to_tokens(list(range(len(tok)))), range(len(tok))))
    # the old rule (each choice encoded alone) scores a lone "▁" first -- the same token for both choices
    old = [builder.encode_continuation(c) for c in builder.continuations()]
    assert old == [[ids["▁"], ids["▁negative"]], [ids["▁"], ids["▁positive"]]]
    # the new rule: the tokens the model sees after the prompt
    assert request.continuation_tokens == [[ids["▁negative"]], [ids["▁positive"]]]
    for choice, tokens in zip(task.choices, request.continuation_tokens):
        joint = tok(request.context + " " + choice)["input_ids"]
        assert request.context_tokens + tokens == joint
    # single-token choices now: scored off the prompt's last position, equal to the joint sequence by hand
    model = tiny_lm(len(tok))
    scores = scoring.score_loglik(model, [request.context_tokens], [request.continuation_tokens], pad_token_id=0)
    for c, tokens in enumerate(request.continuation_tokens):
        assert float(scores[0, c]) == pytest.approx(by_hand(model, request.context_tokens + tokens, 1), abs=1e-5)


def test_calibration_choices_follow_the_content_free_prompt():
    tok = sentencepiece_style_tokenizer()
    builder = scoring.PromptBuilder(task_cfg("sst2", calibrate=True), tok)
    request = builder.request({"index": 0, "text_a": "dull", "label": 0}, calibrate=True)
    cf_context = builder.context(builder.content_free(request.row))
    for choice, tokens in zip(["negative", "positive"], request.content_free_continuation_tokens):
        assert request.content_free_tokens + tokens == tok(cf_context + " " + choice)["input_ids"]


def test_a_choice_that_adds_no_tokens_is_a_clear_error():
    tok = merging_byte_tokenizer()
    task = task_cfg("sst2", choices=["", "x"], prompt={"template": "{text_a}", "target_delimiter": ""})
    with pytest.raises(ValueError, match="choice '' adds no tokens"):
        scoring.PromptBuilder(task, tok).request({"index": 0, "text_a": "a", "label": 0})


def test_fixed_fewshot_prompts_are_encoded_whole_and_share_a_true_token_prefix():
    tok = merging_byte_tokenizer()
    merged = tok.convert_tokens_to_ids("ĊĊ")
    task = task_cfg("sst2", num_fewshot=2, calibrate=True, fewshot={"sampling": "fixed", "seed": 3})
    pool = [{"index": i, "text_a": t, "label": i % 2} for i, t in enumerate(["bad", "good", "dull", "fun"])]
    rows = [{"index": 10 + i, "text_a": t, "label": i % 2} for i, t in enumerate(["meh", "great film", "ugh", "wow"])]
    builder = scoring.PromptBuilder(task, tok, pool)
    requests = [builder.request(row, calibrate=True) for row in rows]
    shots_text, shots_tokens = builder._prefix()
    assert shots_tokens[-1] == merged  # the shots block alone ends in "\n\n" merged ...
    for r in requests:
        assert r.context_tokens == tok(r.context)["input_ids"]  # ... the prompt is the joint encoding,
        assert merged not in r.context_tokens[len(shots_tokens) - 1 :]  # where the boundary is "\n", "\n"
        old = shots_tokens + tok(r.context[len(shots_text) :])["input_ids"]  # the old, separate encoding
        assert old != r.context_tokens
    assert scoring.align_prefixes(requests) == len(shots_tokens) - 1  # the longest true token prefix
    n = requests[0].prefix_len
    assert all(
        r.prefix_len == n and r.context_tokens[:n] == shots_tokens[:n] and r.content_free_tokens[:n] == shots_tokens[:n]
        for r in requests
    )
    # the shared-prefix fast path gives the numbers of whole prompts scored one at a time
    model = tiny_lm(len(tok))
    module = ZeroShotModule(model, tok, task)
    scoring.PATH_COUNTS.clear()
    records = module.score_batch(requests[:3]) + module.score_batch(requests[3:])
    assert scoring.PATH_COUNTS["prefix"] >= 2 and "full" not in scoring.PATH_COUNTS
    for r, record in zip(requests, records):
        raw = [by_hand(model, r.context_tokens + c, len(c)) for c in r.continuation_tokens]
        cf = [by_hand(model, r.content_free_tokens + c, len(c)) for c in r.content_free_continuation_tokens]
        assert record["scores"] == pytest.approx([a - b for a, b in zip(raw, cf)], abs=1e-4)


def test_shots_that_are_a_token_prefix_are_shared_whole():
    tok = merging_byte_tokenizer()
    # the delimiter ends in a space-free token the question cannot merge with
    task = task_cfg(
        "sst2",
        num_fewshot=2,
        fewshot={"sampling": "fixed", "seed": 3},
        prompt={"template": "{text_a} ->", "fewshot_delimiter": ";"},
    )
    pool = [{"index": i, "text_a": t, "label": i % 2} for i, t in enumerate(["bad", "good", "dull", "fun"])]
    builder = scoring.PromptBuilder(task, tok, pool)
    requests = [builder.request({"index": 10 + i, "text_a": t, "label": 0}) for i, t in enumerate(["meh", "ugh"])]
    assert scoring.align_prefixes(requests) == len(builder._prefix()[1])
