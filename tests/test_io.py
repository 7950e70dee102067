"""Specification of the embedding file format: what `save_embeddings` writes, `load_embeddings` reads back the same
from .pt and .npz files, and any other file is refused by name."""

import numpy as np
import pytest
import torch

from lit_metric import load_embeddings, save_embeddings


def export():
    return {
        "embeddings": torch.randn(3, 4),
        "labels": torch.tensor([0, 1, 1]),
        "indexes": torch.tensor([2, 0, 1]),
        "paths": ["a/2.png", "b/0.png", "b/1.png"],
    }


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_a_saved_export_loads_back_the_same_into_new_folders(suffix, tmp_path):
    written, path = export(), tmp_path / "new" / f"embeddings{suffix}"
    save_embeddings(written, path)
    loaded = load_embeddings(path)
    assert set(loaded) == set(written) and loaded["paths"] == written["paths"]
    for name in ("embeddings", "labels", "indexes"):
        assert torch.equal(loaded[name], written[name])


def test_pt_files_are_plain_dicts_for_torch_load_and_npz_files_plain_arrays_for_numpy(tmp_path):
    save_embeddings(export(), tmp_path / "e.pt")
    save_embeddings(export(), tmp_path / "e.npz")
    assert torch.load(tmp_path / "e.pt", weights_only=True)["paths"] == export()["paths"]
    with np.load(tmp_path / "e.npz") as arrays:  # allow_pickle is off: nothing pickled
        assert arrays["paths"].dtype.kind == "U" and arrays["embeddings"].shape == (3, 4)


def test_only_pt_and_npz_files_are_written_or_read(tmp_path):
    with pytest.raises(ValueError, match=r"`path` must end in \.pt or \.npz, got '.*embeddings.csv'"):
        save_embeddings(export(), tmp_path / "embeddings.csv")
    (tmp_path / "embeddings.csv").write_text("0.1,0.2\n")
    with pytest.raises(ValueError, match=r"`path` must end in \.pt or \.npz, got '.*embeddings.csv'"):
        load_embeddings(tmp_path / "embeddings.csv")


def test_loading_a_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="`path` .*missing.pt"):
        load_embeddings(tmp_path / "missing.pt")
