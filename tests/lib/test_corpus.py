"""mambabook.corpus: a deterministic, disjoint split of the stdlib sources; seeded batches."""

import numpy as np
import pytest
import torch

from mambabook.corpus import decode, encode, is_validation, load_corpus, sample_batch, stdlib_files


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(max_bytes=400_000, val_fraction=0.2)


def test_split_is_deterministic_and_disjoint(corpus):
    again = load_corpus(max_bytes=400_000, val_fraction=0.2)
    assert corpus.train_files == again.train_files and corpus.val_files == again.val_files
    assert np.array_equal(corpus.train, again.train) and np.array_equal(corpus.val, again.val)
    assert not set(corpus.train_files) & set(corpus.val_files)
    assert corpus.train_files == sorted(corpus.train_files)
    assert all(is_validation(f, 0.2) for f in corpus.val_files)
    assert not any(is_validation(f, 0.2) for f in corpus.train_files)
    assert 0 < len(corpus.train) + len(corpus.val) <= 400_000
    assert corpus.train.dtype == np.uint8


def test_split_is_by_file_not_by_cap():
    """A file's split depends only on its path: a larger cap keeps every earlier assignment."""
    small, big = load_corpus(max_bytes=200_000), load_corpus(max_bytes=600_000)
    assert set(small.val_files) <= set(big.val_files)
    assert set(small.train_files) <= set(big.train_files)


def test_files_are_sources_of_this_interpreter():
    files = stdlib_files()
    assert len(files) > 100 and all(f.suffix == ".py" for f in files)
    assert not any("site-packages" in f.parts for f in files)
    assert any(f.name == "functools.py" for f in files)


def test_sample_batch_seeded_and_shifted(corpus):
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x1, y1 = sample_batch(corpus.train, 4, 16, g1)
    x2, y2 = sample_batch(corpus.train, 4, 16, g2)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == y1.shape == (4, 16) and x1.dtype == torch.long
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # y is x shifted by one byte
    assert decode(encode("def f(): ü")) == "def f(): ü"


def test_bad_inputs_name_the_argument(corpus):
    with pytest.raises(ValueError, match="max_bytes"):
        load_corpus(max_bytes=0)
    with pytest.raises(ValueError, match="val_fraction"):
        load_corpus(val_fraction=1.5)
    with pytest.raises(ValueError, match="root"):
        stdlib_files("/nonexistent/dir")
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="seq_len"):
        sample_batch(corpus.val, 2, len(corpus.val), g)
    with pytest.raises(ValueError, match="batch"):
        sample_batch(corpus.val, 0, 8, g)
    with pytest.raises(TypeError, match="data"):
        sample_batch(list(corpus.val[:100]), 2, 8, g)
