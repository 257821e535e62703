import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
# The repository root too, for the bench's helpers (bench/engine_servers.py) whatever runs pytest.
sys.path.insert(1, str(Path(__file__).parent.parent))

DATA = Path(__file__).parent / "data"
