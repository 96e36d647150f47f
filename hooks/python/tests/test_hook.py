"""Tests of the EnvProxy Python hook, run without libenvproxy.so.

The mapping tests install the hook on this process's os.environ with a fake resolver in place
of libc getenv. The sitecustomize tests start real interpreters with PYTHONPATH pointing at the
hook directory and LD_PRELOAD naming a harmless library file called libenvproxy.so.

Run with: python3 -m unittest discover -s hooks/python/tests
"""

import json
import operator
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path

HOOK_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HOOK_DIR))

import envproxy_hook

# Prefix of every variable these tests create, so cleanup never touches anything else.
PREFIX = "EPTEST_"
SETTING_NAMES = ("ENVPROXY_ON_ERROR", "ENVPROXY_LOOKUP_UNSET")


class FakeResolver:
    """Stand-in for libc getenv under the library: returns values from a table, records calls."""

    def __init__(self, values):
        self.values = values
        self.calls = []

    def __call__(self, name):
        assert isinstance(name, bytes), name
        self.calls.append(name)
        return self.values.get(name)


def read_child_environment(names, env=None):
    """Start a plain interpreter and return its os.environ values for names (None if unset)."""
    code = "import json, os, sys; print(json.dumps({n: os.environ.get(n) for n in sys.argv[1:]}))"
    result = subprocess.run(
        [sys.executable, "-S", "-c", code, *names],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


class HookTestCase(unittest.TestCase):
    """Installs the hook on os.environ and removes every variable a test created."""

    def setUp(self):
        self.saved_settings = {name: os.environ.get(name) for name in SETTING_NAMES}
        for name in SETTING_NAMES:
            os.environ.pop(name, None)
        self.addCleanup(self.restore_environment)

    def restore_environment(self):
        envproxy_hook.uninstall()
        for name in list(os.environ):
            if name.startswith((PREFIX, "ENVPROXY_" + PREFIX)):
                del os.environ[name]
        for name, value in self.saved_settings.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def install(self, variables, secrets, on_error=None, lookup_unset=False):
        """Set raw variables, then install the hook with a resolver serving secrets."""
        for name, value in variables.items():
            os.environ[name] = value
        if on_error is not None:
            os.environ["ENVPROXY_ON_ERROR"] = on_error
        if lookup_unset:
            os.environ["ENVPROXY_LOOKUP_UNSET"] = "1"
        resolver = FakeResolver({name.encode(): value.encode() for name, value in secrets.items()})
        envproxy_hook.install(resolver)
        return resolver


class ReadTests(HookTestCase):
    def setUp(self):
        super().setUp()
        self.resolver = self.install(
            {
                "EPTEST_DATABASE_URL": "vault:secret/data/app#db_url",
                "EPTEST_API_KEY": "envproxy:API_KEY",
                "EPTEST_PLAIN": "plain-value",
            },
            {
                "EPTEST_DATABASE_URL": "postgres://app:fake@db/app",
                "EPTEST_API_KEY": "fake-api-key",
            },
        )

    def test_install_changes_class_in_place(self):
        self.assertIs(type(os.environ), envproxy_hook.ResolvingEnviron)
        self.assertIs(type(os.environb), envproxy_hook.ResolvingEnviron)
        self.assertIs(os.environ._data, os.environb._data)

    def test_getitem_resolves_reference(self):
        self.assertEqual(os.environ["EPTEST_DATABASE_URL"], "postgres://app:fake@db/app")
        self.assertEqual(os.environ["EPTEST_API_KEY"], "fake-api-key")

    def test_getitem_plain_value_skips_resolver(self):
        self.assertEqual(os.environ["EPTEST_PLAIN"], "plain-value")
        self.assertEqual(self.resolver.calls, [])

    def test_getitem_missing_raises_keyerror(self):
        with self.assertRaises(KeyError) as caught:
            os.environ["EPTEST_MISSING"]
        self.assertEqual(caught.exception.args, ("EPTEST_MISSING",))
        self.assertEqual(self.resolver.calls, [])

    def test_get_and_getenv_resolve(self):
        self.assertEqual(os.environ.get("EPTEST_API_KEY"), "fake-api-key")
        self.assertEqual(os.getenv("EPTEST_API_KEY"), "fake-api-key")
        self.assertEqual(os.getenv("EPTEST_PLAIN"), "plain-value")

    def test_get_missing_returns_default(self):
        self.assertIsNone(os.environ.get("EPTEST_MISSING"))
        self.assertEqual(os.environ.get("EPTEST_MISSING", "fallback"), "fallback")
        self.assertEqual(os.getenv("EPTEST_MISSING", "fallback"), "fallback")

    def test_environb_resolves_reference(self):
        self.assertEqual(os.environb[b"EPTEST_API_KEY"], b"fake-api-key")
        self.assertEqual(os.environb.get(b"EPTEST_API_KEY"), b"fake-api-key")
        self.assertEqual(os.getenvb(b"EPTEST_DATABASE_URL"), b"postgres://app:fake@db/app")
        self.assertEqual(os.getenvb(b"EPTEST_MISSING", b"fallback"), b"fallback")
        self.assertIn((b"EPTEST_API_KEY", b"fake-api-key"), list(os.environb.items()))

    def test_items_resolve(self):
        items = dict(os.environ.items())
        self.assertEqual(items["EPTEST_DATABASE_URL"], "postgres://app:fake@db/app")
        self.assertEqual(items["EPTEST_API_KEY"], "fake-api-key")
        self.assertEqual(items["EPTEST_PLAIN"], "plain-value")
        self.assertIn(("EPTEST_API_KEY", "fake-api-key"), os.environ.items())
        self.assertNotIn(("EPTEST_API_KEY", "envproxy:API_KEY"), os.environ.items())

    def test_values_resolve(self):
        values = list(os.environ.values())
        self.assertIn("fake-api-key", values)
        self.assertNotIn("envproxy:API_KEY", values)
        self.assertIn("fake-api-key", os.environ.values())
        self.assertNotIn("envproxy:API_KEY", os.environ.values())

    def test_copy_resolves(self):
        copy = os.environ.copy()
        self.assertIs(type(copy), dict)
        self.assertEqual(copy["EPTEST_DATABASE_URL"], "postgres://app:fake@db/app")
        self.assertEqual(copy["EPTEST_API_KEY"], "fake-api-key")
        self.assertEqual(copy["EPTEST_PLAIN"], "plain-value")
        self.assertEqual(len(copy), len(os.environ))

    def test_dict_constructor_resolves(self):
        copy = dict(os.environ)
        self.assertEqual(copy["EPTEST_DATABASE_URL"], "postgres://app:fake@db/app")
        self.assertEqual(copy["EPTEST_API_KEY"], "fake-api-key")

    def test_union_operators_resolve(self):
        merged = os.environ | {"EPTEST_EXTRA": "x"}
        self.assertEqual(merged["EPTEST_API_KEY"], "fake-api-key")
        self.assertEqual(merged["EPTEST_EXTRA"], "x")
        merged = {"EPTEST_API_KEY": "overridden"} | os.environ
        self.assertEqual(merged["EPTEST_API_KEY"], "fake-api-key")

    def test_keys_are_raw_names(self):
        self.assertIn("EPTEST_API_KEY", os.environ.keys())
        raw_names = [name.decode("utf-8", "surrogateescape") for name in os.environ._data]
        self.assertEqual(list(os.environ.keys()), raw_names)
        self.assertEqual(self.resolver.calls, [])

    def test_contains_iter_len_skip_resolver(self):
        self.assertIn("EPTEST_API_KEY", os.environ)
        self.assertNotIn("EPTEST_MISSING", os.environ)
        self.assertIn(b"EPTEST_API_KEY", os.environb)
        names = list(os.environ)
        self.assertIn("EPTEST_DATABASE_URL", names)
        self.assertIn(b"EPTEST_DATABASE_URL", list(os.environb))
        self.assertEqual(len(os.environ), len(os.environ._data))
        self.assertEqual(len(os.environb), len(os.environ._data))
        self.assertEqual(self.resolver.calls, [])

    def test_repr_shows_references_only(self):
        text = repr(os.environ)
        self.assertIn("'EPTEST_API_KEY': 'envproxy:API_KEY'", text)
        self.assertIn("'EPTEST_DATABASE_URL': 'vault:secret/data/app#db_url'", text)
        self.assertNotIn("fake-api-key", text)
        self.assertNotIn("postgres://app:fake@db/app", text)
        self.assertNotIn("fake-api-key", repr(os.environb))
        self.assertEqual(self.resolver.calls, [])

    def test_every_read_calls_resolver(self):
        os.environ["EPTEST_API_KEY"]
        os.environ["EPTEST_API_KEY"]
        os.environ.get("EPTEST_API_KEY")
        self.assertEqual(self.resolver.calls, [b"EPTEST_API_KEY"] * 3)

    def test_reserved_names_never_resolved(self):
        os.environ["ENVPROXY_EPTEST_SOCKET"] = "envproxy:SOCKET"
        self.resolver.values[b"ENVPROXY_EPTEST_SOCKET"] = b"resolved"
        self.assertEqual(os.environ["ENVPROXY_EPTEST_SOCKET"], "envproxy:SOCKET")
        self.assertEqual(os.getenv("ENVPROXY_EPTEST_SOCKET"), "envproxy:SOCKET")
        self.assertEqual(os.environb[b"ENVPROXY_EPTEST_SOCKET"], b"envproxy:SOCKET")
        self.assertEqual(os.environ.copy()["ENVPROXY_EPTEST_SOCKET"], "envproxy:SOCKET")
        self.assertNotIn(b"ENVPROXY_EPTEST_SOCKET", self.resolver.calls)

    def test_non_utf8_value_uses_surrogateescape(self):
        self.resolver.values[b"EPTEST_API_KEY"] = b"key-\xff"
        self.assertEqual(os.environ["EPTEST_API_KEY"], "key-\udcff")
        self.assertEqual(os.environb[b"EPTEST_API_KEY"], b"key-\xff")

    def test_null_from_resolver_returns_raw(self):
        # Without ENVPROXY_ON_ERROR=unset the library returns NULL only for a name that is
        # missing from the C environment, and os._Environ then reads from its own copy.
        del self.resolver.values[b"EPTEST_API_KEY"]
        self.assertEqual(os.environ["EPTEST_API_KEY"], "envproxy:API_KEY")
        self.assertIn("EPTEST_API_KEY", os.environ)
        self.assertIn("EPTEST_API_KEY", list(os.environ.keys()))
        self.assertIn(("EPTEST_API_KEY", "envproxy:API_KEY"), list(os.environ.items()))

    def test_unknown_scheme_not_resolved(self):
        os.environ["EPTEST_URL"] = "https://vault:8200/"
        os.environ["EPTEST_UPPER"] = "VAULT:secret#key"
        self.assertEqual(os.environ["EPTEST_URL"], "https://vault:8200/")
        self.assertEqual(os.environ["EPTEST_UPPER"], "VAULT:secret#key")
        self.assertEqual(self.resolver.calls, [])

    def test_non_string_key_raises_typeerror(self):
        with self.assertRaises(TypeError):
            os.environ[1]
        with self.assertRaises(TypeError):
            operator.contains(os.environ, 1)

    def test_uninstall_restores_raw_reads(self):
        envproxy_hook.uninstall()
        self.assertIs(type(os.environ), os._Environ)
        self.assertEqual(os.environ["EPTEST_API_KEY"], "envproxy:API_KEY")


class UnsetOnErrorTests(HookTestCase):
    """ENVPROXY_ON_ERROR=unset: the library returns NULL for references it cannot resolve."""

    def setUp(self):
        super().setUp()
        self.resolver = self.install(
            {
                "EPTEST_BROKEN": "vault:secret/data/gone#key",
                "EPTEST_GOOD": "envproxy:GOOD",
                "EPTEST_PLAIN": "plain-value",
            },
            {"EPTEST_GOOD": "good-value"},
            on_error="unset",
        )

    def test_getitem_raises_keyerror(self):
        with self.assertRaises(KeyError) as caught:
            os.environ["EPTEST_BROKEN"]
        self.assertEqual(caught.exception.args, ("EPTEST_BROKEN",))
        with self.assertRaises(KeyError):
            os.environb[b"EPTEST_BROKEN"]

    def test_get_returns_default(self):
        self.assertIsNone(os.environ.get("EPTEST_BROKEN"))
        self.assertEqual(os.environ.get("EPTEST_BROKEN", "fallback"), "fallback")
        self.assertEqual(os.getenv("EPTEST_BROKEN", "fallback"), "fallback")
        self.assertIsNone(os.getenvb(b"EPTEST_BROKEN"))

    def test_copies_leave_name_out(self):
        self.assertNotIn("EPTEST_BROKEN", os.environ.copy())
        self.assertNotIn("EPTEST_BROKEN", dict(os.environ))
        self.assertNotIn("EPTEST_BROKEN", list(os.environ.keys()))
        self.assertNotIn("EPTEST_BROKEN", dict(os.environ.items()))
        self.assertNotIn("vault:secret/data/gone#key", list(os.environ.values()))
        self.assertEqual(os.environ.copy()["EPTEST_GOOD"], "good-value")

    def test_install_uses_unset_class(self):
        self.assertIs(type(os.environ), envproxy_hook.UnsetOnErrorEnviron)
        self.assertIs(type(os.environb), envproxy_hook.UnsetOnErrorEnviron)
        self.assertIs(os.environ._data, os.environb._data)

    def test_contains_leaves_name_out(self):
        self.assertNotIn("EPTEST_BROKEN", os.environ)
        self.assertNotIn(b"EPTEST_BROKEN", os.environb)
        self.assertIn("EPTEST_GOOD", os.environ)
        self.assertIn(b"EPTEST_GOOD", os.environb)
        self.assertIn("EPTEST_PLAIN", os.environ)
        self.assertNotIn("EPTEST_MISSING", os.environ)

    def test_contains_resolves_references_only(self):
        "EPTEST_BROKEN" in os.environ
        "EPTEST_GOOD" in os.environ
        "EPTEST_PLAIN" in os.environ
        "EPTEST_MISSING" in os.environ
        self.assertEqual(self.resolver.calls, [b"EPTEST_BROKEN", b"EPTEST_GOOD"])

    def test_contains_agrees_with_getitem(self):
        for environment, encode in ((os.environ, str), (os.environb, str.encode)):
            for name in ("EPTEST_BROKEN", "EPTEST_GOOD", "EPTEST_PLAIN", "EPTEST_MISSING"):
                key = encode(name)
                try:
                    environment[key]
                    readable = True
                except KeyError:
                    readable = False
                self.assertEqual(key in environment, readable, key)
                self.assertEqual(key in list(environment), readable, key)

    def test_iteration_leaves_name_out(self):
        names = list(os.environ)
        self.assertNotIn("EPTEST_BROKEN", names)
        self.assertIn("EPTEST_GOOD", names)
        self.assertIn("EPTEST_PLAIN", names)
        self.assertNotIn("EPTEST_BROKEN", list(os.environ.keys()))
        self.assertNotIn("EPTEST_BROKEN", os.environ.keys())
        self.assertIn("EPTEST_GOOD", os.environ.keys())

    def test_iteration_keeps_raw_order(self):
        raw_names = [name.decode("utf-8", "surrogateescape") for name in os.environ._data]
        raw_names.remove("EPTEST_BROKEN")
        self.assertEqual(list(os.environ), raw_names)

    def test_iteration_resolves_each_reference_once(self):
        # A plain loop, because list() calls len() first, which is a second pass.
        for _name in os.environ:
            pass
        self.assertEqual(sorted(self.resolver.calls), [b"EPTEST_BROKEN", b"EPTEST_GOOD"])

    def test_len_counts_readable_names(self):
        expected = len(os.environ._data) - 1
        self.assertEqual(len(os.environ), expected)
        self.assertEqual(len(os.environb), expected)
        self.assertEqual(len(os.environ.keys()), expected)
        self.assertEqual(len(os.environ.items()), expected)
        self.assertEqual(len(list(os.environ)), expected)
        self.assertEqual(len(os.environ.copy()), expected)

    def test_environb_leaves_name_out(self):
        names = list(os.environb)
        self.assertNotIn(b"EPTEST_BROKEN", names)
        self.assertIn(b"EPTEST_GOOD", names)
        self.assertNotIn(b"EPTEST_BROKEN", os.environb.keys())
        items = dict(os.environb.items())
        self.assertNotIn(b"EPTEST_BROKEN", items)
        self.assertEqual(items[b"EPTEST_GOOD"], b"good-value")
        self.assertNotIn(b"EPTEST_BROKEN", dict(os.environb))

    def test_repr_leaves_name_out(self):
        text = repr(os.environ)
        self.assertNotIn("EPTEST_BROKEN", text)
        self.assertIn("'EPTEST_GOOD': 'envproxy:GOOD'", text)
        self.assertIn("'EPTEST_PLAIN': 'plain-value'", text)
        self.assertNotIn("good-value", text)
        self.assertTrue(text.startswith("environ({"), text)
        self.assertTrue(text.endswith("})"), text)

    def test_environb_repr_shows_references_only(self):
        text = repr(os.environb)
        self.assertNotIn("EPTEST_BROKEN", text)
        self.assertIn("b'EPTEST_GOOD': b'envproxy:GOOD'", text)
        self.assertNotIn("good-value", text)

    def test_reserved_name_listed_without_resolver(self):
        os.environ["ENVPROXY_EPTEST_SOCKET"] = "envproxy:SOCKET"
        self.assertIn("ENVPROXY_EPTEST_SOCKET", os.environ)
        self.assertIn("ENVPROXY_EPTEST_SOCKET", list(os.environ))
        self.assertEqual(os.environ["ENVPROXY_EPTEST_SOCKET"], "envproxy:SOCKET")
        self.assertNotIn(b"ENVPROXY_EPTEST_SOCKET", self.resolver.calls)

    def test_name_removed_during_iteration_skipped(self):
        data = {
            b"EPTEST_GOOD": b"envproxy:GOOD",
            b"EPTEST_PLAIN": b"plain-value",
            b"EPTEST_BROKEN": b"vault:secret/data/gone#key",
        }
        environ = envproxy_hook.UnsetOnErrorEnviron(
            data,
            os.environ.encodekey,
            os.environ.decodekey,
            os.environ.encodevalue,
            os.environ.decodevalue,
        )
        names = []
        for name in environ:
            names.append(name)
            data.pop(b"EPTEST_PLAIN", None)
        self.assertEqual(names, ["EPTEST_GOOD"])

    def test_setitem_replaces_unresolvable(self):
        os.environ["EPTEST_BROKEN"] = "replacement"
        self.assertIn("EPTEST_BROKEN", os.environ)
        self.assertIn("EPTEST_BROKEN", list(os.environ))
        self.assertEqual(os.environ["EPTEST_BROKEN"], "replacement")
        child = read_child_environment(["EPTEST_BROKEN"])
        self.assertEqual(child, {"EPTEST_BROKEN": "replacement"})

    def test_setitem_reaches_child(self):
        os.environ["EPTEST_ADDED"] = "added"
        os.environb[b"EPTEST_BYTES"] = b"bytes-value"
        self.assertIn("EPTEST_ADDED", os.environ)
        child = read_child_environment(["EPTEST_ADDED", "EPTEST_BYTES"])
        self.assertEqual(child, {"EPTEST_ADDED": "added", "EPTEST_BYTES": "bytes-value"})

    def test_delitem_removes_unresolvable(self):
        # The name reads as absent, but the reference is still in the C environment, so del
        # removes it there and child processes do not inherit it.
        del os.environ["EPTEST_BROKEN"]
        self.assertNotIn(b"EPTEST_BROKEN", os.environ._data)
        self.assertEqual(read_child_environment(["EPTEST_BROKEN"]), {"EPTEST_BROKEN": None})
        with self.assertRaises(KeyError):
            del os.environ["EPTEST_BROKEN"]

    def test_pop_removes_raw_entry(self):
        self.assertEqual(os.environ.pop("EPTEST_BROKEN", "fallback"), "fallback")
        self.assertNotIn("EPTEST_BROKEN", os.environ)
        self.assertEqual(read_child_environment(["EPTEST_BROKEN"]), {"EPTEST_BROKEN": None})

    def test_pop_without_default_raises(self):
        with self.assertRaises(KeyError):
            os.environ.pop("EPTEST_BROKEN")
        self.assertNotIn("EPTEST_BROKEN", os.environ)

    def test_setdefault_replaces_unresolvable(self):
        self.assertEqual(os.environ.setdefault("EPTEST_BROKEN", "fallback"), "fallback")
        self.assertEqual(os.environ._data[b"EPTEST_BROKEN"], b"fallback")
        child = read_child_environment(["EPTEST_BROKEN"])
        self.assertEqual(child, {"EPTEST_BROKEN": "fallback"})

    def test_popitem_skips_unresolvable(self):
        data = {b"EPTEST_BROKEN": b"vault:secret/data/gone#key", b"EPTEST_GOOD": b"envproxy:GOOD"}
        environ = envproxy_hook.UnsetOnErrorEnviron(
            data,
            os.environ.encodekey,
            os.environ.decodekey,
            os.environ.encodevalue,
            os.environ.decodevalue,
        )
        self.assertEqual(environ.popitem(), ("EPTEST_GOOD", "good-value"))
        with self.assertRaises(KeyError):
            environ.popitem()
        self.assertEqual(data, {b"EPTEST_BROKEN": b"vault:secret/data/gone#key"})


class LookupUnsetTests(HookTestCase):
    """ENVPROXY_LOOKUP_UNSET=1: names absent from the environment are resolved too."""

    def test_missing_name_resolved(self):
        resolver = self.install({}, {"EPTEST_ONLY_IN_AGENT": "agent-value"}, lookup_unset=True)
        self.assertEqual(os.environ["EPTEST_ONLY_IN_AGENT"], "agent-value")
        self.assertEqual(os.getenv("EPTEST_ONLY_IN_AGENT"), "agent-value")
        self.assertNotIn("EPTEST_ONLY_IN_AGENT", os.environ)
        self.assertEqual(resolver.calls, [b"EPTEST_ONLY_IN_AGENT"] * 2)

    def test_missing_unknown_name_raises(self):
        resolver = self.install({}, {}, lookup_unset=True)
        with self.assertRaises(KeyError):
            os.environ["EPTEST_NOWHERE"]
        self.assertEqual(resolver.calls, [b"EPTEST_NOWHERE"])

    def test_names_getenv_cannot_take_skipped(self):
        resolver = self.install({}, {}, lookup_unset=True)
        self.assertIsNone(os.environ.get("EPTEST_A=B"))
        self.assertIsNone(os.environ.get("EPTEST_A\0B"))
        self.assertIsNone(os.environ.get(""))
        self.assertIsNone(os.environ.get("ENVPROXY_EPTEST_MISSING"))
        self.assertEqual(resolver.calls, [])

    def test_disabled_by_default(self):
        resolver = self.install({}, {"EPTEST_ONLY_IN_AGENT": "agent-value"})
        self.assertIsNone(os.environ.get("EPTEST_ONLY_IN_AGENT"))
        self.assertEqual(resolver.calls, [])


class WriteTests(HookTestCase):
    """Writes reach the C environment, so a child started afterwards inherits them."""

    def setUp(self):
        super().setUp()
        self.resolver = self.install(
            {"EPTEST_API_KEY": "envproxy:API_KEY", "EPTEST_PLAIN": "plain-value"},
            {"EPTEST_API_KEY": "fake-api-key", "EPTEST_NEW_REF": "new-secret"},
        )

    def test_setitem_reaches_child(self):
        os.environ["EPTEST_PLAIN"] = "changed"
        os.environ["EPTEST_ADDED"] = "added"
        child = read_child_environment(["EPTEST_PLAIN", "EPTEST_ADDED"])
        self.assertEqual(child, {"EPTEST_PLAIN": "changed", "EPTEST_ADDED": "added"})

    def test_setitem_reference_then_resolves(self):
        os.environ["EPTEST_NEW_REF"] = "envproxy:NEW_REF"
        self.assertEqual(os.environ["EPTEST_NEW_REF"], "new-secret")
        child = read_child_environment(["EPTEST_NEW_REF"])
        self.assertEqual(child, {"EPTEST_NEW_REF": "envproxy:NEW_REF"})

    def test_environb_setitem_reaches_child(self):
        os.environb[b"EPTEST_BYTES"] = b"bytes-value"
        self.assertEqual(os.environ["EPTEST_BYTES"], "bytes-value")
        self.assertEqual(read_child_environment(["EPTEST_BYTES"]), {"EPTEST_BYTES": "bytes-value"})

    def test_delitem_reaches_child(self):
        del os.environ["EPTEST_API_KEY"]
        self.assertNotIn("EPTEST_API_KEY", os.environ)
        self.assertEqual(read_child_environment(["EPTEST_API_KEY"]), {"EPTEST_API_KEY": None})
        with self.assertRaises(KeyError):
            del os.environ["EPTEST_API_KEY"]

    def test_pop_returns_resolved_and_unsets(self):
        self.assertEqual(os.environ.pop("EPTEST_API_KEY"), "fake-api-key")
        self.assertEqual(read_child_environment(["EPTEST_API_KEY"]), {"EPTEST_API_KEY": None})
        self.assertEqual(os.environ.pop("EPTEST_API_KEY", "gone"), "gone")
        with self.assertRaises(KeyError):
            os.environ.pop("EPTEST_API_KEY")
        with self.assertRaises(TypeError):
            os.environ.pop("EPTEST_API_KEY", 1, 2)

    def test_update_reaches_child(self):
        os.environ.update({"EPTEST_PLAIN": "updated"}, EPTEST_KEYWORD="keyword")
        os.environ |= {"EPTEST_OR": "or-value"}
        child = read_child_environment(["EPTEST_PLAIN", "EPTEST_KEYWORD", "EPTEST_OR"])
        self.assertEqual(
            child,
            {"EPTEST_PLAIN": "updated", "EPTEST_KEYWORD": "keyword", "EPTEST_OR": "or-value"},
        )

    def test_setdefault_missing_writes(self):
        self.assertEqual(os.environ.setdefault("EPTEST_DEFAULTED", "default"), "default")
        self.assertEqual(
            read_child_environment(["EPTEST_DEFAULTED"]), {"EPTEST_DEFAULTED": "default"}
        )

    def test_setdefault_present_keeps_reference(self):
        self.assertEqual(os.environ.setdefault("EPTEST_API_KEY", "default"), "fake-api-key")
        self.assertEqual(os.environ._data[b"EPTEST_API_KEY"], b"envproxy:API_KEY")
        child = read_child_environment(["EPTEST_API_KEY"])
        self.assertEqual(child, {"EPTEST_API_KEY": "envproxy:API_KEY"})

    def test_child_inherits_references(self):
        os.environ["EPTEST_API_KEY"]
        child = read_child_environment(["EPTEST_API_KEY"])
        self.assertEqual(child, {"EPTEST_API_KEY": "envproxy:API_KEY"})

    def test_subprocess_accepts_environ_copy(self):
        # Without the library nothing maps values back to references, so the child receives the
        # resolved value. Under the library, execve receives it and passes the reference.
        child = read_child_environment(["EPTEST_API_KEY"], env=os.environ.copy())
        self.assertEqual(child, {"EPTEST_API_KEY": "fake-api-key"})
        child = read_child_environment(["EPTEST_API_KEY"], env=os.environ)
        self.assertEqual(child, {"EPTEST_API_KEY": "fake-api-key"})

    def clear_in_child(self, extra_env, resolved_value):
        """Clear os.environ in a child interpreter and return what it prints.

        The child's resolver returns resolved_value for every name, or None when it is empty.

        Clearing this test process's environment would break the rest of the run, so a child
        interpreter clears its own and then starts /usr/bin/env to print what is left.
        """
        code = textwrap.dedent(
            """
            import os, subprocess, sys
            sys.path.insert(0, sys.argv[1])
            import envproxy_hook
            resolved_value = sys.argv[2].encode() or None
            calls = []
            envproxy_hook.install(lambda name: calls.append(name) or resolved_value)
            os.environ.clear()
            left = subprocess.run(["/usr/bin/env"], capture_output=True, text=True).stdout
            print(repr((len(os.environ), len(os.environb), left, calls)))
            """
        )
        env = {"PATH": os.environ["PATH"], "EPTEST_API_KEY": "envproxy:API_KEY", **extra_env}
        result = subprocess.run(
            [sys.executable, "-S", "-c", code, str(HOOK_DIR), resolved_value],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.strip()

    def test_clear_reaches_child(self):
        self.assertEqual(self.clear_in_child({}, "resolved"), repr((0, 0, "", [])))

    def test_clear_unset_on_error_reaches_child(self):
        output = self.clear_in_child({"ENVPROXY_ON_ERROR": "unset"}, "")
        self.assertEqual(output, repr((0, 0, "", [])))


def find_libc_path():
    """Return the path of the C library mapped into this process."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if "/libc.so" in path or "/libc-" in path:
                return path
    raise RuntimeError("libc not found in /proc/self/maps, so there is no library to preload")


# Prints what the hook did in a fresh interpreter, as JSON, after reading EPTEST_REF once.
PROBE = textwrap.dedent(
    """
    import json, os, sys
    report = {
        "class": type(os.environ).__name__,
        "hook_imported": "envproxy_hook" in sys.modules,
        "ctypes_at_start": "ctypes" in sys.modules,
    }
    report["value"] = os.environ.get("EPTEST_REF")
    report["ctypes_after_read"] = "ctypes" in sys.modules
    print(json.dumps(report))
    """
)


class SitecustomizeTests(unittest.TestCase):
    """Real interpreters with PYTHONPATH naming the hook directory."""

    def setUp(self):
        temporary = tempfile.TemporaryDirectory(prefix="envproxy-hook-test-")
        self.addCleanup(temporary.cleanup)
        self.tmp = Path(temporary.name)
        # A real library named libenvproxy.so, so the loader reports no error.
        self.preload = self.tmp / "libenvproxy.so"
        self.preload.symlink_to(find_libc_path())

    def run_python(self, extra_env, pythonpath=None, code=PROBE, cwd=None):
        env = {"PATH": os.environ["PATH"], "LD_PRELOAD": str(self.preload)}
        env["PYTHONPATH"] = pythonpath if pythonpath is not None else str(HOOK_DIR)
        env.update(extra_env)
        env = {name: value for name, value in env.items() if value is not None}
        return subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def run_probe(self, extra_env, pythonpath=None):
        result = self.run_python(extra_env, pythonpath)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr, "")
        return json.loads(result.stdout.splitlines()[-1])

    def write_other_sitecustomize(self, body):
        other = self.tmp / "other"
        other.mkdir()
        (other / "sitecustomize.py").write_text(textwrap.dedent(body))
        return other

    def test_reference_installs_hook(self):
        report = self.run_probe({"EPTEST_REF": "envproxy:REF"})
        self.assertEqual(report["class"], "ResolvingEnviron")
        self.assertTrue(report["hook_imported"])

    def test_ctypes_loaded_on_first_read(self):
        report = self.run_probe({"EPTEST_REF": "envproxy:REF"})
        self.assertFalse(report["ctypes_at_start"])
        self.assertTrue(report["ctypes_after_read"])
        # libc's own getenv returns the reference unchanged.
        self.assertEqual(report["value"], "envproxy:REF")

    def assert_not_installed(self, report):
        self.assertEqual(report["class"], "_Environ")
        self.assertFalse(report["hook_imported"])
        self.assertFalse(report["ctypes_at_start"])
        self.assertFalse(report["ctypes_after_read"])

    def test_enabled_zero_skips_hook(self):
        report = self.run_probe({"EPTEST_REF": "envproxy:REF", "ENVPROXY_ENABLED": "0"})
        self.assert_not_installed(report)
        self.assertEqual(report["value"], "envproxy:REF")

    def test_no_python_skips_hook(self):
        report = self.run_probe({"EPTEST_REF": "envproxy:REF", "ENVPROXY_NO_PYTHON": "1"})
        self.assert_not_installed(report)

    def test_missing_library_skips_hook(self):
        report = self.run_probe({"EPTEST_REF": "envproxy:REF", "LD_PRELOAD": None})
        self.assert_not_installed(report)

    def test_other_preload_skips_hook(self):
        other = self.tmp / "libother.so"
        other.symlink_to(find_libc_path())
        report = self.run_probe({"EPTEST_REF": "envproxy:REF", "LD_PRELOAD": str(other)})
        self.assert_not_installed(report)

    def test_no_reference_skips_hook(self):
        report = self.run_probe({"EPTEST_REF": "plain"})
        self.assert_not_installed(report)

    def test_reserved_reference_skips_hook(self):
        report = self.run_probe({"ENVPROXY_EPTEST": "envproxy:X"})
        self.assert_not_installed(report)

    def test_unset_on_error_installs_unset_class(self):
        report = self.run_probe({"EPTEST_REF": "envproxy:REF", "ENVPROXY_ON_ERROR": "unset"})
        self.assertEqual(report["class"], "UnsetOnErrorEnviron")
        self.assertEqual(report["value"], "envproxy:REF")

    def test_lookup_unset_installs_hook(self):
        report = self.run_probe({"ENVPROXY_LOOKUP_UNSET": "1"})
        self.assertEqual(report["class"], "ResolvingEnviron")
        self.assertFalse(report["ctypes_at_start"])

    def test_chains_other_sitecustomize(self):
        other = self.write_other_sitecustomize(
            """
            import os, sys
            print("OTHER-SITECUSTOMIZE", __name__, __file__, type(os.environ).__name__)
            MARKER = "from-other"
            """
        )
        code = PROBE + "import sitecustomize; print(sitecustomize.MARKER)\n"
        pythonpath = f"{HOOK_DIR}:{other}"
        result = self.run_python({"EPTEST_REF": "envproxy:REF"}, pythonpath, code)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr, "")
        lines = result.stdout.splitlines()
        self.assertEqual(len(lines), 3, result.stdout)
        expected = (
            f"OTHER-SITECUSTOMIZE sitecustomize {other / 'sitecustomize.py'} ResolvingEnviron"
        )
        self.assertEqual(lines[0], expected)
        self.assertEqual(json.loads(lines[1])["class"], "ResolvingEnviron")
        self.assertEqual(lines[2], "from-other")

    def test_chains_when_hook_skipped(self):
        other = self.write_other_sitecustomize('print("OTHER-SITECUSTOMIZE")\n')
        result = self.run_python({"ENVPROXY_ENABLED": "0"}, f"{HOOK_DIR}:{other}")
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0], "OTHER-SITECUSTOMIZE")
        self.assert_not_installed(json.loads(lines[1]))

    def test_other_sitecustomize_error_reported(self):
        other = self.write_other_sitecustomize('raise RuntimeError("broken image hook")\n')
        result = self.run_python({"EPTEST_REF": "envproxy:REF"}, f"{HOOK_DIR}:{other}")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            result.stderr,
            "Error in sitecustomize; set PYTHONVERBOSE for traceback:\n"
            "RuntimeError: broken image hook\n",
        )
        self.assertEqual(json.loads(result.stdout)["class"], "ResolvingEnviron")

    def test_hook_directory_twice_no_recursion(self):
        other = self.write_other_sitecustomize('print("OTHER-SITECUSTOMIZE")\n')
        alias = self.tmp / "alias"
        alias.symlink_to(HOOK_DIR)
        pythonpath = f"{HOOK_DIR}:{alias}:{HOOK_DIR}:{other}"
        result = self.run_python({"EPTEST_REF": "envproxy:REF"}, pythonpath)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr, "")
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0], "OTHER-SITECUSTOMIZE")
        self.assertEqual(len(lines), 2, result.stdout)
        self.assertEqual(json.loads(lines[1])["class"], "ResolvingEnviron")

    def test_relative_hook_directory_chains(self):
        other = self.write_other_sitecustomize('print("OTHER-SITECUSTOMIZE")\n')
        pythonpath = f"{HOOK_DIR.name}:{other}"
        result = self.run_python({"EPTEST_REF": "envproxy:REF"}, pythonpath, cwd=HOOK_DIR.parent)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr, "")
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0], "OTHER-SITECUSTOMIZE")
        self.assertEqual(len(lines), 2, result.stdout)
        self.assertEqual(json.loads(lines[1])["class"], "ResolvingEnviron")


if __name__ == "__main__":
    unittest.main()
