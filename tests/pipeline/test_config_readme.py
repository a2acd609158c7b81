"""The README's configuration reference names every key of the schema, so the two cannot drift apart."""
import re
from pathlib import Path

from pipeline.config import Config

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_config_key_is_in_the_readme_table():
    rows = {}
    for line in README.read_text().splitlines():
        match = re.match(r"\| `(\w+)` \| (.*) \|$", line)
        if match:
            rows[match.group(1)] = set(re.findall(r"`(\w+)`", match.group(2)))
    for name, field in Config.model_fields.items():
        section = field.alias or name
        assert section in rows, f"README configuration table has no row for section {section!r}"
        missing = set(field.annotation.model_fields) - rows[section]
        assert not missing, f"README row for {section!r} misses {sorted(missing)}"
