"""``streamlit run tests/app_probe.py``: the real app, then a note of what it imported.

After every script run, the names of the TensorFlow/Keras modules loaded in this
streamlit process are written to ``$SCALPNET_PROBE_FILE`` (JSON), so a test can check
from inside the serving process that ONNX serving never imported TensorFlow.
"""

import json
import os
import runpy
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "streamlit_app.py"

try:
    runpy.run_path(str(APP), run_name="__main__")
finally:
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
    Path(os.environ["SCALPNET_PROBE_FILE"]).write_text(json.dumps(heavy))
