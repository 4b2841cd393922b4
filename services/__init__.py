"""BentoML services (one service class per module).

In the repository ``llmops`` is installed (editable). In a built bento it is not: it is
copied to ``src/plugins/llmops`` next to this package, so put that folder on the path.
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("llmops") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
