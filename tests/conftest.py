import os
import warnings

import pytest
import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.manual_seed(0)


@pytest.fixture(scope="session")
def mobilenet():
    from qcompile.zoo.evaluate import mobilenet_setup

    return mobilenet_setup()


@pytest.fixture(scope="session")
def mobilenet_compiled(mobilenet, tmp_path_factory):
    import qcompile

    model, example, calibration, *_ = mobilenet
    dump = tmp_path_factory.mktemp("mnv2-dump")
    cm = qcompile.compile(model, example, calibration=calibration, dump_dir=dump, progress=False, verify_each=True)
    return cm, dump
