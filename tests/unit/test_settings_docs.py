"""Every operator setting is documented for platform engineers (deploy/README.md), and nothing else is."""

import re
from pathlib import Path

from tokenplane_operator.settings import OperatorSettings

README = Path(__file__).resolve().parents[2] / "deploy" / "README.md"


def test_operator_settings_table_matches_the_settings_model() -> None:
    documented = set(re.findall(r"^\| `(TOKENPLANE_[A-Z0-9_]+)` \|", README.read_text(), flags=re.MULTILINE))
    expected = {f"TOKENPLANE_{name.upper()}" for name in OperatorSettings.model_fields}
    assert documented == expected, f"missing: {expected - documented}; stale: {documented - expected}"
