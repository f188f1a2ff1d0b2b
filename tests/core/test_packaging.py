import subprocess
import sys
import zipfile

import pytest

from tests.core.conftest import ROOT

EXPECTED = {"schemas", "curation", "synth", "train", "slmforge"}


@pytest.mark.slow
def test_wheel_holds_exactly_the_five_packages(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                    str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("slmforge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == EXPECTED
    assert not any(n.startswith(("tests/", "data/", "bench/")) for n in names)
    assert "curation/dedup/near.py" in names  # sub-packages are included
