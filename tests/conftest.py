"""Shared test setup: quiet TensorFlow and one small converted synthetic dataset."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> str:
    """A real TFRecord dataset converted from a synthetic FER2013-format CSV.

    700 train / 140 val / 140 test 48x48 gray images with FER2013-like class
    imbalance, written by the same converter users run. Shared by every test
    that needs a dataset; tests must not modify it.
    """
    from data_tools import fer2013, synthetic

    root = tmp_path_factory.mktemp("synthetic")
    csv_path = str(root / "synthetic.csv.gz")
    synthetic.write_fer2013_csv(csv_path, num_train=700, num_val=140, num_test=140, seed=0)
    data_dir = str(root / "tfrecords")
    fer2013.convert_fer2013(csv_path, data_dir, progress=False)
    return data_dir
