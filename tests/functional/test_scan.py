"""Specification of the compiled tile scan: it is built wherever a C compiler is, finds exactly the tile entries that
reach their row's or column's floor, in batches that fit its buffers, and makes the search find what torch finds."""

import shutil

import pytest
import torch

import lit_metric.functional.knn as knn
from lit_metric.functional import _scan
from lit_metric.functional._scan import TileScan, tile_scan


@pytest.fixture
def function():
    if tile_scan() is None:
        pytest.skip("no C compiler builds the tile scan here")
    return tile_scan()


def test_the_scan_is_built_where_a_c_compiler_is():
    if shutil.which("cc") is None:
        pytest.skip("no C compiler here")
    assert tile_scan() is not None


def test_without_a_compiler_the_search_warns_once_that_it_runs_in_torch_alone(monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    tile_scan.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="no C compiler '/nonexistent/cc' was found"):
            assert tile_scan() is None
    finally:
        monkeypatch.undo()
        tile_scan.cache_clear()


def test_switched_off_there_is_no_scan_and_no_warning(monkeypatch, recwarn):
    monkeypatch.setenv("LIT_METRIC_NO_SCAN_KERNEL", "1")
    tile_scan.cache_clear()
    try:
        assert tile_scan() is None
        assert not recwarn.list
    finally:
        monkeypatch.undo()
        tile_scan.cache_clear()


def test_a_compiler_command_with_arguments_and_one_that_refuses_march_native_still_build(monkeypatch, tmp_path):
    if shutil.which("cc") is None:
        pytest.skip("no C compiler here")
    refusing = tmp_path / "cc"
    refusing.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -march=native ] && exit 1; done\nexec cc "$@"\n')
    refusing.chmod(0o755)
    for compiler in ("cc -m64", str(refusing)):
        monkeypatch.setenv("CC", compiler)
        tile_scan.cache_clear()
        try:
            assert tile_scan() is not None, compiler
        finally:
            tile_scan.cache_clear()


def reference(tile, row_floor, column_floor):
    rows = (tile >= row_floor[:, None]).nonzero()
    columns = (tile >= column_floor[None, :]).nonzero().flip(1)
    return {tuple(pair) for pair in rows.tolist()}, {tuple(pair) for pair in columns.tolist()}


@pytest.mark.parametrize("width", [16, 37, 200])
@pytest.mark.parametrize("capacity_rows", [1, 5, 1000])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_scan_finds_exactly_the_entries_that_reach_their_floors(function, width, capacity_rows, threads):
    generator = torch.Generator().manual_seed(width)
    tile = torch.rand(50, width, generator=generator)
    tile[torch.rand(50, width, generator=generator) < 0.1] = float("-inf")  # padding and exclusions
    row_floor = torch.rand(50, generator=generator)
    row_floor[:5] = torch.finfo(torch.float32).min  # queries without a threshold yet take every finite score
    column_floor = torch.rand(width, generator=generator)
    scan = TileScan(function, capacity_rows * width, threads)
    rows, columns, batches = set(), set(), 0
    for (row_query, row_item, row_score), (column_query, column_item, column_score) in scan(
        tile, row_floor, column_floor
    ):
        batches += 1
        assert bool((row_query[1:] >= row_query[:-1]).all()), "row queries must come in ascending order"
        assert torch.equal(row_score, tile[row_query, row_item])
        assert torch.equal(column_score, tile[column_item, column_query])
        rows |= set(zip(row_query.tolist(), row_item.tolist()))
        columns |= set(zip(column_query.tolist(), column_item.tolist()))
    assert (rows, columns) == reference(tile, row_floor, column_floor)
    if capacity_rows == 1:
        assert batches > 1, "buffers of one row's worth must take several batches"
    # Rows only: no column candidates.
    assert all(columns is None for _, columns in scan(tile, row_floor, None))


def test_tiles_wider_than_the_buffers_are_refused_and_empty_tiles_give_nothing(function):
    scan = TileScan(function, 8, threads=1)
    with pytest.raises(ValueError, match=r"tiles may be at most `capacity` = 8 wide, got width 16"):
        next(scan(torch.rand(4, 16), torch.zeros(4), None))
    assert list(scan(torch.rand(0, 8), torch.zeros(0), None)) == []


def test_the_scan_works_under_inference_mode_as_in_lightning_s_validation(function):
    with torch.inference_mode():
        tile, floor = torch.rand(40, 24), torch.full((40,), 0.5)
        scan = TileScan(function, 40 * 24, threads=2)
        (rows, _), *_ = list(scan(tile, floor, None))
    assert len(rows[0]) == int((tile >= 0.5).sum())


def test_the_search_finds_bitwise_the_neighbours_of_the_torch_path(function, monkeypatch):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(1500, 12, generator=generator)
    x[700:760] = x[:60]  # exact duplicates across tiles
    x[900:1000] = x[900]  # a tie of a hundred items
    queries = x[:400]
    scanned = [knn.cosine_knn(x, 25, chunk_size=256), knn.cosine_knn(queries, 25, x, chunk_size=256)]
    monkeypatch.setattr(knn, "tile_scan", lambda: None)
    plain = [knn.cosine_knn(x, 25, chunk_size=256), knn.cosine_knn(queries, 25, x, chunk_size=256)]
    for (scores, indices), (expected_scores, expected_indices) in zip(scanned, plain):
        assert torch.equal(indices, expected_indices) and torch.equal(scores, expected_scores)
    assert _scan.tile_scan() is function
