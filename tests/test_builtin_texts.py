"""The built-in calibration texts for text models without user data: enough of them, of real lengths,
and only what the model's tokenizer can spell."""

from __future__ import annotations

import torch.nn as nn

from pdo_hub.hub import examples
from pdo_hub.optimizers.inputs import split_held_out


class WordTokenizer:
    """Splits on spaces; words outside `vocabulary` are the unknown token (id 0)."""

    unk_token_id = 0

    def __init__(self, vocabulary: set[str]) -> None:
        self.ids = {word: index + 1 for index, word in enumerate(sorted(vocabulary))}

    def __call__(self, text, add_special_tokens=True, **kwargs):
        return {"input_ids": [self.ids.get(word, 0) for word in text.split()]}


ENGLISH_ONLY = WordTokenizer({word for text in examples.SENTENCES[:16] for word in text.split()})


def test_passages_of_growing_length_sit_beside_single_sentences_and_both_are_held_out():
    texts = examples.builtin_texts(ENGLISH_ONLY, 32)
    assert len(texts) == 32 and texts == examples.builtin_texts(ENGLISH_ONLY, 32), "deterministic"
    lengths = [len(text.split()) for text in texts]
    for index, length in enumerate(lengths):
        target = {1: 48, 5: 96, 7: 128, 9: 96, 13: 48, 15: 128}.get(index % 16)
        if target is None:
            assert length < 48, (index, texts[index])
        else:
            assert length >= min(target, 100), (index, length)  # the English pool has ~150 words
    held_out = texts[3::4]  # what split_held_out keeps aside from batch-1 inputs
    assert any(len(t.split()) < 48 for t in held_out) and any(len(t.split()) >= 96 for t in held_out)


def test_texts_the_tokenizer_cannot_spell_are_left_out():
    texts = examples.builtin_texts(ENGLISH_ONLY, 64)
    assert not any("Verspätung" in text or "heures" in text or "def add" in text for text in texts)
    spelled_by_all = WordTokenizer({word for text in examples.SENTENCES for word in text.split()})
    assert any("Verspätung" in text for text in examples.builtin_texts(spelled_by_all, 64))


class _Encoder(nn.Module):
    def forward(self, input_ids, attention_mask=None):
        return input_ids


def test_without_user_sentences_twice_the_calibration_count_is_built_so_a_quarter_held_out_is_not_a_handful():
    from transformers import BertTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = BertTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    inputs = examples.text_inputs(tokenizer, _Encoder(), 16)
    assert len(inputs) == 32 and set(inputs[0]) == {"input_ids", "attention_mask"}
    calibration, held_out, note = split_held_out(inputs)
    assert (len(calibration), len(held_out), note) == (24, 8, "8 held-out calibration batches")
    user = examples.text_inputs(tokenizer, _Encoder(), 16, ["one sentence", "another one"])
    assert len(user) == 16, "the user's sentences are cycled to the calibration count, as before"


def test_held_out_texts_share_no_sentence_with_the_calibration_texts():
    spelled_by_all = WordTokenizer({word for text in examples.SENTENCES for word in text.split()})
    texts = examples.builtin_texts(spelled_by_all, 32)
    held_out = " ".join(texts[3::4])
    calibration = " ".join(t for i, t in enumerate(texts) if i % 4 != 3)
    shared = [s for s in examples.SENTENCES if s in held_out and s in calibration]
    assert not shared, shared


def test_the_two_calibration_folds_prune_fits_and_judges_on_share_no_sentence():
    from pdo_hub.optimizers.methods.prune import _folds

    spelled_by_all = WordTokenizer({word for text in examples.SENTENCES for word in text.split()})
    texts = examples.builtin_texts(spelled_by_all, 32)
    calibration, _, _ = split_held_out(texts)
    fit, judge = (" ".join(fold) for fold in _folds(calibration))
    shared = [s for s in examples.SENTENCES if s in fit and s in judge]
    assert fit and judge and not shared, shared


def test_each_calibration_fold_gets_passages_of_each_length():
    # prune fits on one fold and judges on the other: a fit on 96-token passages judged only on 48-token
    # ones (or the reverse) measures a length shift as well as the cut.
    from pdo_hub.optimizers.methods.prune import _folds

    spelled_by_all = WordTokenizer({word for text in examples.SENTENCES for word in text.split()})
    calibration, _, _ = split_held_out(examples.builtin_texts(spelled_by_all, 32))
    for fold in _folds(calibration):
        lengths = [len(text.split()) for text in fold]
        assert sum(48 <= n < 96 for n in lengths) >= 2 and sum(n >= 96 for n in lengths) >= 2, lengths


def test_only_the_first_input_the_benchmark_example_is_padded_the_rest_carry_only_real_tokens():
    from transformers import AutoModel, AutoTokenizer

    from pdo_hub.demo import minilm_folder

    folder = minilm_folder()
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)
    for sentences in (None, ["A short one.", "Another sentence, a little longer than the first one."]):
        inputs = examples.text_inputs(tokenizer, model, 8, sentences)
        assert inputs[0]["input_ids"].shape == (1, examples.MAX_TOKENS)
        assert int(inputs[0]["attention_mask"].sum()) < examples.MAX_TOKENS  # padding, masked out
        for encoded in inputs[1:]:
            assert int(encoded["attention_mask"].sum()) == encoded["input_ids"].shape[1] <= examples.MAX_TOKENS
        if sentences is None:
            assert max(x["input_ids"].shape[1] for x in inputs[1:]) == examples.MAX_TOKENS  # passages still reach it
            assert sum(x["input_ids"].shape[1] for x in inputs) < len(inputs) * examples.MAX_TOKENS / 2
