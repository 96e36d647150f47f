"""Print whether each variable reads as a resolved secret through os.environ, never its value.

Usage: python3 show_env.py [NAME...]   (default: the keys of examples/secrets.json)
"""

import os
import sys

DEFAULT_NAMES = [
    "DATABASE_URL",
    "API_KEY",
    "STRIPE_SECRET_KEY",
    "JWT_SIGNING_KEY",
    "REDIS_PASSWORD",
]
SCHEMES = ("vault:", "envproxy:")


def describe(name):
    """Return the report line for one variable."""
    value = os.environ.get(name)
    if value is None:
        return f"{name}: not set"
    if value.startswith(SCHEMES):
        # A reference names where the secret lives. It is not secret itself.
        return f"{name}: unresolved reference ({value})"
    size = len(os.fsencode(value))
    return f"{name}: resolved ({size} bytes)"


def main(names):
    for name in names or DEFAULT_NAMES:
        print(describe(name))


if __name__ == "__main__":
    main(sys.argv[1:])
