"""Refuse committed secrets: scan the files git tracks or would add (ignored ones are not
the repository's) for private keys, cloud and service tokens, passwords inside URLs,
literal password/secret/token assignments, committed .env files and Kubernetes Secret
objects. Run by `make lint`; exits 1 naming each finding (its value masked).

Placeholders pass: ${VAR...}, $(VAR), <...>, and values starting change-me, test, fake,
dummy or example.
A line that must hold a match anyway (a test building a fake key, say) ends with
`secrets: allow`.

    .venv/bin/python tools/check_secrets.py [PATH ...]   # default: the git work tree
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ALLOW = "secrets: allow"
MAX_BYTES = 2_000_000  # larger files are data, not configuration

PATTERNS: dict[str, re.Pattern[str]] = {
    "private key": re.compile(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY(?: BLOCK)?-----"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    "Stripe live key": re.compile(r"\b[rs]k_live_[0-9A-Za-z]{16,}"),
    "JSON web token": re.compile(r"\beyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{8,}"),
    # scheme://user:password@host, unless the password is a placeholder
    "password in URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@$]*:(?P<value>[^@\s/]+)@"),
    # password = "literal" (and secret, token, api_key...), in code, YAML or .env style
    "literal credential": re.compile(
        r"(?i)\b[\w.-]*(?:password|passwd|secret|token|api_?key)\b['\"]?\s*[:=]\s*"
        r"['\"]?(?P<value>[^\s'\"#,}]{8,})"
    ),
}
PLACEHOLDER = re.compile(
    r"^(?:\$\{.*|\$\(.*|\$[A-Z_]+|<.*>|\*+|x+|password|secret|token"
    r"|(?:change-me|test|fake|dummy|example)\b.*)$",
    re.I,
)
# Names and values that are code, not credentials: env var names, attribute access.
NOT_A_VALUE = re.compile(
    r"^(?:[A-Z][A-Z0-9_]*|[a-z_]\w*(?:\.\w+)*\(.*|[a-z_]\w*(?:\.\w+)+|\w*Ref)$"
)


def findings(path: Path, text: str) -> list[str]:
    """`path:line: kind` for each secret-looking match in `text`."""
    found = []
    if path.name == ".env" or (path.name.startswith(".env.") and path.suffix != ".example"):
        found.append(f"{path}: a committed env file (commit a .example with placeholders)")
    for number, line in enumerate(text.splitlines(), 1):
        if line.rstrip().endswith(ALLOW):
            continue
        if path.suffix in (".yaml", ".yml") and re.match(r"^kind:\s*Secret\s*$", line):
            found.append(f"{path}:{number}: a Kubernetes Secret object (reference it instead)")
        for kind, pattern in PATTERNS.items():
            for match in pattern.finditer(line):
                value = match.groupdict().get("value")
                if value and (PLACEHOLDER.match(value) or NOT_A_VALUE.match(value)):
                    continue
                found.append(f"{path}:{number}: {kind}: {mask(match.group(0))}")
    return found


def mask(secret: str) -> str:
    return secret[:6] + "..." if len(secret) > 6 else "..."


def tracked_files(root: Path) -> list[Path]:
    """Files git tracks or would add in `root` (not ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [root / name for name in out.split("\0") if name]


def scan(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        if not path.is_file() or path.stat().st_size > MAX_BYTES:
            continue
        data = path.read_bytes()
        if b"\0" in data:  # binary
            continue
        found += findings(path, data.decode("utf-8", errors="replace"))
    return found


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parent.parent
    paths = [Path(a) for a in argv] or tracked_files(root)
    found = scan(paths)
    for line in found:
        print(line, file=sys.stderr)
    if found:
        print(f"{len(found)} possible secret(s): remove them, or mark a fake with "
              f"'{ALLOW}'", file=sys.stderr)  # fmt: skip
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
