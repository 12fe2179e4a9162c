"""docs/promises.md maps each README promise to its proof: every test and file it names exists."""

import re

from conftest import ROOT

TABLE = ROOT / "docs/promises.md"


def _proofs() -> list[str]:
    rows = [line for line in TABLE.read_text().splitlines() if line.startswith("| ")][2:]
    assert len(rows) > 30, "the promise table lost its rows"
    proofs = []
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 3 and cells[2], f"a promise without a proof: {row}"
        proofs += re.findall(r"`([^`]+)`", cells[2])
    return proofs


def test_every_named_test_and_file_exists():
    missing = []
    for proof in _proofs():
        path, _, name = proof.partition("::")
        if not (ROOT / path).is_file():
            missing.append(proof)
        elif name and not re.search(rf"^def {re.escape(name)}\(", (ROOT / path).read_text(), re.M):
            missing.append(proof)
    assert not missing, f"docs/promises.md names what is gone: {missing}"


def test_the_readme_points_at_the_table():
    assert "docs/promises.md" in (ROOT / "README.md").read_text()
