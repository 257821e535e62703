import os
import sys
from pathlib import Path

# `voiceorch serve` runs one worker process per core unless told otherwise: the tests' servers
# (started by many helpers, often with real models) stay single processes unless a test asks for
# workers with --workers (tests/test_workers.py).
os.environ.setdefault("VOICEORCH_WORKERS", "1")

sys.path.insert(0, str(Path(__file__).parent))
# The repository root too, for the bench's helpers (bench/engine_servers.py) whatever runs pytest.
sys.path.insert(1, str(Path(__file__).parent.parent))

DATA = Path(__file__).parent / "data"
