"""Tests of the show_env examples in C, Python and Node.js, run without EnvProxy.

Each program receives the same environment, and its output is checked line by line. No
library is loaded, so references stay unresolved, which is what the programs must report.

Run with: python3 -m unittest discover -s examples/tests
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent

ENVIRONMENT = {
    "DATABASE_URL": "postgres://app:fake@localhost/app",
    "API_KEY": "envproxy:API_KEY",
    "STRIPE_SECRET_KEY": "vault:secret/data/payments#stripe_key",
    "UTF8_VALUE": "caf\u00e9",
    "EMPTY": "",
}

EXPECTED_FOR_ARGUMENTS = [
    "DATABASE_URL: resolved (33 bytes)",
    "API_KEY: unresolved reference (envproxy:API_KEY)",
    "STRIPE_SECRET_KEY: unresolved reference (vault:secret/data/payments#stripe_key)",
    "UTF8_VALUE: resolved (5 bytes)",
    "EMPTY: resolved (0 bytes)",
    "NOT_SET_ANYWHERE: not set",
]
ARGUMENTS = [line.split(":", 1)[0] for line in EXPECTED_FOR_ARGUMENTS]

# Without arguments, the programs report the keys of secrets.json in file order.
EXPECTED_DEFAULT = [
    "DATABASE_URL: resolved (33 bytes)",
    "API_KEY: unresolved reference (envproxy:API_KEY)",
    "STRIPE_SECRET_KEY: unresolved reference (vault:secret/data/payments#stripe_key)",
    "JWT_SIGNING_KEY: not set",
    "REDIS_PASSWORD: not set",
]


class ShowEnvTests:
    """Checks shared by the three programs. Subclasses set command()."""

    def run_program(self, arguments):
        env = {"PATH": os.environ["PATH"], **ENVIRONMENT}
        result = subprocess.run(
            [*self.command(), *arguments],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr, "")
        return result.stdout.splitlines()

    def test_named_variables(self):
        self.assertEqual(self.run_program(ARGUMENTS), EXPECTED_FOR_ARGUMENTS)

    def test_default_names_from_secrets(self):
        self.assertEqual(self.run_program([]), EXPECTED_DEFAULT)

    def test_values_never_printed(self):
        output = "\n".join(self.run_program(ARGUMENTS))
        self.assertNotIn(ENVIRONMENT["DATABASE_URL"], output)
        self.assertNotIn(ENVIRONMENT["UTF8_VALUE"], output)


class SecretsFileTests(unittest.TestCase):
    def test_default_names_match_secrets_keys(self):
        with open(EXAMPLES / "secrets.json", encoding="utf-8") as file:
            keys = list(json.load(file))
        self.assertEqual(keys, [line.split(":", 1)[0] for line in EXPECTED_DEFAULT])


class CShowEnvTests(ShowEnvTests, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        compiler = shutil.which("cc")
        if compiler is None:
            raise unittest.SkipTest("cc is not installed")
        cls.build_dir = tempfile.TemporaryDirectory(prefix="envproxy-show-env-")
        cls.binary = Path(cls.build_dir.name) / "show_env"
        # The plain command from the example's header, plus warnings as errors.
        subprocess.run(
            [compiler, "-Wall", "-Wextra", "-Werror", "-o", str(cls.binary), "show_env.c"],
            cwd=EXAMPLES / "c",
            check=True,
        )

    @classmethod
    def tearDownClass(cls):
        cls.build_dir.cleanup()

    def command(self):
        return [str(self.binary)]


class PythonShowEnvTests(ShowEnvTests, unittest.TestCase):
    def command(self):
        return [sys.executable, str(EXAMPLES / "python" / "show_env.py")]


class NodeShowEnvTests(ShowEnvTests, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.node = shutil.which("node")
        if cls.node is None:
            raise unittest.SkipTest("node is not installed")

    def command(self):
        return [self.node, str(EXAMPLES / "node" / "show_env.js")]


if __name__ == "__main__":
    unittest.main()
