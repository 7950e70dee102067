"""Specification of the embedding file format: what `save_embeddings` writes, `load_embeddings` reads back the same
from .pt and .npz files, and any other file is refused by name."""

import numpy as np
import pytest
import torch

from lit_metric import load_embeddings, save_embeddings
from lit_metric.io import load_manifest, load_shard, save_manifest, shard_path


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


def write_shards(folder, parts):
    """A sharded export of `parts` (dicts of save_embeddings), with its manifest."""
    files = [shard_path(folder / "gallery.json", rank, len(parts)) for rank in range(len(parts))]
    for part, file in zip(parts, files):
        save_embeddings(part, file)
    save_manifest(folder / "gallery.json", files, [len(part["embeddings"]) for part in parts], 4)
    return folder / "gallery.json"


def test_a_manifest_lists_the_shard_files_beside_it_with_their_rows(tmp_path):
    parts = [export(), {"embeddings": torch.randn(2, 4)}]
    manifest = load_manifest(write_shards(tmp_path, parts))
    assert [file.name for file in manifest.files] == ["gallery-00000-of-00002.pt", "gallery-00001-of-00002.pt"]
    assert manifest.rows == (3, 2) and manifest.dimension == 4
    assert torch.equal(load_shard(manifest, 1)["embeddings"], parts[1]["embeddings"])


def test_a_manifest_that_does_not_match_its_files_is_a_named_error(tmp_path):
    path = write_shards(tmp_path, [export(), export()])
    save_embeddings({"embeddings": torch.randn(5, 4)}, shard_path(path, 1, 2))
    with pytest.raises(ValueError, match=r"`manifest` '.*gallery.json' does not match its shard '.*gallery-00001-of-"
                                         r"00002.pt': it lists 3 rows of dimension 4, the file holds embeddings of "
                                         r"shape \(5, 4\)"):
        load_shard(load_manifest(path), 1)
    shard_path(path, 0, 2).unlink()
    with pytest.raises(FileNotFoundError, match=r"`manifest` '.*gallery.json' lists the shard '.*-00000-of-00002.pt'"):
        load_manifest(path)
    path.write_text('{"shards": []}')
    with pytest.raises(ValueError, match="`manifest` '.*gallery.json' must be a manifest of embedding shards"):
        load_manifest(path)
    with pytest.raises(ValueError, match="`manifest` must end in .json, got 'gallery.pt'"):
        load_manifest("gallery.pt")
