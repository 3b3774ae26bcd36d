"""Write the Grafana dashboard generated from dist_face/metrics/panels.py.

python tools/make_dashboard.py [--out configs/monitoring/grafana/dist_face.json]
"""

import argparse
from pathlib import Path

from dist_face.metrics.dashboard import dashboard_json

DEFAULT = Path(__file__).resolve().parents[1] / "configs/monitoring/grafana/dist_face.json"

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT)
    out = p.parse_args().out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dashboard_json())
    print(f"wrote {out}")
