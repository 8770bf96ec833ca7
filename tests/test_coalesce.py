"""Dynamic batching in an eventlet process (a subprocess: this test process stays unpatched)."""
import subprocess
import sys

SCRIPT = r'''
import eventlet
eventlet.monkey_patch()
import time
from scaigrid.runtime.coalesce import DynamicBatcher

calls = []
def square(batch):
    calls.append(len(batch))
    time.sleep(0.02)  # a C call holding the GIL-free thread, as onnxruntime does
    return [x * x for x in batch]

b = DynamicBatcher(square, max_batch=16, max_delay=0.01)
pool = eventlet.GreenPool()
results = list(pool.imap(lambda i: b.submit([i, i + 100]), range(20)))
assert results == [[i * i, (i + 100) ** 2] for i in range(20)], results
assert sum(calls) == 40 and max(calls) <= 17 and len(calls) < 20, calls
def boom(batch):
    raise ValueError("bad batch")
bad = DynamicBatcher(boom, max_delay=0.001)
try:
    bad.submit([1])
except ValueError as exc:
    assert "bad batch" in str(exc)
else:
    raise AssertionError("the batch's error must reach the caller")
print("ok", calls)
'''


def test_concurrent_callers_share_batches_and_errors():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
