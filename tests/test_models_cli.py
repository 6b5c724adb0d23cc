"""``python -m fnet.models describe`` prints what discovery found."""

import json
import subprocess
import sys


def test_describe_cli_reports_discovered_paths():
    out = subprocess.run(
        [sys.executable, "-m", "fnet.models", "describe", "tiny:llama"], capture_output=True, text=True, check=True
    )
    info = json.loads(out.stdout)
    assert info["blocks"] == "model.layers"
    assert info["down_proj"] == "down_proj"
    assert info["signals"] == {"mlp_out": 32, "mlp_act": 48}
    assert info["layout"] == "[batch, seq, width]"
