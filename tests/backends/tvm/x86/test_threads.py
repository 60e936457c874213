"""A compiled x86 model called from several threads at once gives every caller its own right answer."""
import threading

import torch

import qcompile


def test_four_threads_calling_one_model_get_the_reference_results():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(16 * 16 * 16, 10)).eval()
    x = torch.randn(1, 3, 16, 16)
    compiled = qcompile.compile(model, (x,), target="x86", calibration=[x], progress=False)
    reference = qcompile.compile(model, (x,), calibration=[x], progress=False)
    inputs = [torch.randn(1, 3, 16, 16) for _ in range(8)]
    expected = [reference(i) for i in inputs]
    failures: list = []

    def calls(thread: int) -> None:
        try:
            for r in range(100):
                i = (thread + r) % len(inputs)
                if not torch.equal(compiled(inputs[i]), expected[i]):
                    failures.append((thread, r, "wrong result"))
        except Exception as exc:  # noqa: BLE001  (a corrupted VM raises from TVM; the test reports it)
            failures.append((thread, "raised", repr(exc)))

    threads = [threading.Thread(target=calls, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
