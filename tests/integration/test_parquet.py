"""data=parquet: a table written here with pyarrow's own writer, read back value for value (scalar
feature columns side by side, or one column of lists); missing or non-numeric columns name the key."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import runner
from runner.data.sources import load_data


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(2)
    a, b, label = rng.normal(size=20), rng.normal(size=20), rng.integers(0, 3, 20)
    vectors = rng.normal(size=(20, 4))
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"a": a, "b": b, "label": label, "vec": [list(v) for v in vectors], "name": [f"r{i}" for i in range(20)]}), path)
    return path, a, b, label, vectors


def parquet(path, *overrides: str) -> list[str]:
    return ["data=parquet", f"data.path={path}", "data.target=label", "data.num_outputs=3", *overrides]


def test_scalar_columns_and_a_list_column_read_back_value_for_value(compose, table):
    path, a, b, label, vectors = table
    data = load_data(compose(*parquet(path, "data.features=[b,a]", "data.num_features=2", "data.val_fraction=0.25")).data)
    order = torch.randperm(20, generator=torch.Generator().manual_seed(0))  # data.split_seed's split
    features = torch.from_numpy(np.stack([b, a], axis=1)).float()
    assert torch.equal(data.val_x, features[order[:5]]) and torch.equal(data.train_x, features[order[5:]])
    assert torch.equal(data.train_y, torch.from_numpy(label)[order[5:]])
    rows = load_data(compose(*parquet(path, "data.features=[vec]", "data.num_features=4", "data.val_fraction=0.25")).data)
    assert torch.equal(rows.val_x, torch.from_numpy(vectors).float()[order[:5]])


def test_a_model_trains_on_a_parquet_table(compose, table, tmp_path):
    summary = runner.train(compose(*parquet(table[0], "data.features=[vec]", "data.num_features=4", "trainer.max_steps=2")), tmp_path / "run")
    assert summary["steps"] == 2


def test_bad_columns_and_files_name_the_key(compose, table, tmp_path):
    path = table[0]
    with pytest.raises(runner.ConfigError) as caught:
        load_data(compose(*parquet(path, "data.features=[a,c]", "data.target=lable", "data.num_features=2")).data)
    message = str(caught.value)
    assert f"data.features: {path} has no column 'c'; it has: a, b, label, vec, name" in message
    assert f"data.target: {path} has no column 'lable'" in message
    with pytest.raises(runner.ConfigError, match="data.features: .*column 'name' \\(string\\) is not numbers"):
        load_data(compose(*parquet(path, "data.features=[name]", "data.num_features=1")).data)
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(runner.ConfigError, match=f"data.path: {tmp_path / 'bad.parquet'} is not a Parquet file"):
        load_data(compose(*parquet(tmp_path / "bad.parquet", "data.features=[a]", "data.num_features=1")).data)
    with pytest.raises(runner.ConfigError, match="data.features: required for data.name=parquet"):
        runner.build(compose("data=parquet", f"data.path={path}", "data.target=label", "data.num_features=2", "data.num_outputs=3", "data.features=[]"))
