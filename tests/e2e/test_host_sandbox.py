"""The script sandbox: a test route (routes/testing.lua in a copied scripts dir)
tries each escape under pcall and reports what happened; every attempt must fail,
and the shared stdlib and host tables must be intact afterwards, for this request
and the next ones on the same VM."""
import unittest

from fakes.hostkit import tree_server
from fakes.upstream import Upstream

# Attempt name -> a fragment the error message must contain (proves it failed for
# the right reason, not by accident, e.g. a typo in the test route).
EXPECTED = {
    "os_execute": "execute",
    "os_getenv": "getenv",
    "os_exit": "no os.exit",
    "io_open": "'io'",
    "debug_getinfo": "'debug'",
    "package_loadlib": "'package'",
    "string_dump": "dump",
    "string_dump_method": "dump",
    "load_dump": "'load'",
    "load_binary": "'load'",
    "loadstring": "'loadstring'",
    "dofile": "'dofile'",
    "assign_global": "sandbox_leak",
    "rawset_global": "read-only",
    "read_undefined_global": "undefined_global_xyz",
    "string_metatable": "boolean",
    "string_metatable_set": "protected metatable",
    "modify_string_format": "read-only",
    "rawset_string_format": "read-only",
    "modify_host": "read-only",
    "modify_host_http": "read-only",
    "rawset_host_http": "read-only",
    "require_os": "not found",
    "require_io": "not found",
    "require_debug": "not found",
    "require_path": "not found",
    "host_env_secret": "secret",
    "host_asset_runtime": "only available while scripts load",
    "string_format_intact": "",
}


class SandboxTest(unittest.TestCase):
    def test_every_escape_attempt_fails(self):
        with tree_server() as srv, Upstream() as up:
            r = srv.request("GET", "/test/sandbox")
            self.assertEqual(r.status, 200, r)
            report = r.json
            self.assertEqual(sorted(report), sorted(EXPECTED), "the route and this test disagree")
            escaped = {k: v for k, v in report.items() if v["ok"]}
            self.assertEqual(escaped, {}, "sandbox escapes succeeded")
            for name, fragment in EXPECTED.items():
                self.assertIn(fragment, report[name]["err"], name)
            # Later requests on the same VM see an untouched host and stdlib.
            r = srv.request("GET", "/test/upstream", headers={"x-upstream-url": up.url("/")})
            self.assertEqual((r.status, r.body), (200, "upstream-ok"))
            r = srv.request("GET", "/test/sandbox")
            self.assertEqual({k: v for k, v in r.json.items() if v["ok"]}, {})
            self.assertEqual(srv.request("GET", "/ping").status, 200)


if __name__ == "__main__":
    unittest.main()
