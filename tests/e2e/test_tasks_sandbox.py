"""E2E (issue #3): the local (bubblewrap) sandbox, observed from inside through the
`shell` agent: unprivileged uid with no capabilities, read-only system directories,
private /tmp and $HOME, own pid namespace, no view of the host's data directory or
processes; SANDBOX_NETWORK=none cuts the agent off the network while git clone still
works. The probe script prints KEY=value lines that come back as the assistant
message."""
import os
import re
import unittest
import uuid

from fakes.tasks_kit import GitRepos, assistant_messages, sandbox_dirs, start_task, task_server, wait_task
from harness import new_user


def probe_script(data_dir, port, tmp_name):
    return r"""
echo "UID=$(id -u)"
echo "GID=$(id -g)"
echo "CAPEFF=$(awk '/^CapEff/ {print $2}' /proc/self/status)"
echo "CAPBND=$(awk '/^CapBnd/ {print $2}' /proc/self/status)"
echo "NONEWPRIVS=$(awk '/^NoNewPrivs/ {print $2}' /proc/self/status)"
touch /usr/aicode-probe 2>/dev/null && echo USR=writable || echo USR=readonly
touch /usr/bin/aicode-probe 2>/dev/null && echo USRBIN=writable || echo USRBIN=readonly
touch /etc/aicode-probe 2>/dev/null && echo ETC=writable || echo ETC=readonly
echo x >> /etc/passwd 2>/dev/null && echo PASSWD=writable || echo PASSWD=readonly
touch /aicode-probe 2>/dev/null && echo ROOTFS=writable || echo ROOTFS=readonly
echo probe > /tmp/%(tmp)s && echo TMP=writable || echo TMP=readonly
echo "TMPFS=$(stat -f -c %%T /tmp)"
echo "HOMEDIR=$HOME"
echo probe > "$HOME/probe" && echo HOME=writable || echo HOME=readonly
echo "HOMEFS=$(stat -f -c %%T "$HOME")"
echo "NPROC=$(ps -e --no-headers | wc -l)"
echo "PID1=$(tr '\0' ' ' < /proc/1/cmdline)"
echo "MYPID=$$"
echo "PSLIST=$(ps -eo args --no-headers | tr '\n' '|')"
test -e %(data)s && echo DATA=visible || echo DATA=hidden
test -e %(data)s/aicode.db && echo DB=visible || echo DB=hidden
cat %(data)s/jwt_secret >/dev/null 2>&1 && echo JWT=readable || echo JWT=unreadable
cat /etc/shadow >/dev/null 2>&1 && echo SHADOW=readable || echo SHADOW=unreadable
ls /root >/dev/null 2>&1 && echo ROOTHOME=readable || echo ROOTHOME=unreadable
echo "HOSTNAME=$(hostname)"
echo "SUDO=$(sudo -n true 2>/dev/null && echo yes || echo no)"
echo "WORKSPACE=$(pwd)"
touch workspace-probe && echo REPO=writable || echo REPO=readonly
(bash -c 'echo > /dev/tcp/127.0.0.1/%(port)d') 2>/dev/null && echo TCP=open || echo TCP=blocked
curl -s -o /dev/null -m 5 http://127.0.0.1:%(port)d/ping && echo CURL=ok || echo CURL=failed
""" % {"data": data_dir, "port": port, "tmp": tmp_name}


def parse_kv(text):
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Z0-9_]+)=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


class SandboxIsolationTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.repos = GitRepos()
        cls.repos.make("octo/demo", {"README.md": "hi\n"})
        cls.srv = task_server(cls.repos)
        cls.tok = cls.srv.token(new_user())
        cls.tmp_name = "aicode-probe-" + uuid.uuid4().hex
        cls.data_dir = os.path.abspath(cls.srv.data_dir)
        tid = start_task(cls.srv, cls.tok, probe_script(cls.data_dir, cls.srv.port, cls.tmp_name),
                         cls.repos.url("octo/demo"))
        cls.task = wait_task(cls.srv, cls.tok, tid)
        cls.kv = parse_kv(assistant_messages(cls.task)[0]) if cls.task["status"] == "completed" else {}

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()
        cls.repos.close()

    def test_probe_ran(self):
        self.assertEqual(self.task["status"], "completed", self.task["error"])
        self.assertIn("UID", self.kv)

    def test_unprivileged_without_capabilities(self):
        self.assertEqual(self.kv.get("UID"), "1000")
        self.assertEqual(self.kv.get("GID"), "1000")
        self.assertEqual(int(self.kv.get("CAPEFF", "f"), 16), 0)
        self.assertEqual(int(self.kv.get("CAPBND", "f"), 16), 0)
        self.assertEqual(self.kv.get("SUDO"), "no")

    def test_system_directories_read_only(self):
        for k in ("USR", "USRBIN", "PASSWD"):
            self.assertEqual(self.kv.get(k), "readonly", k)
        self.assertFalse(os.path.exists("/usr/aicode-probe"))
        self.assertFalse(os.path.exists("/etc/aicode-probe"))
        self.assertEqual(self.kv.get("SHADOW"), "unreadable")
        self.assertEqual(self.kv.get("ROOTHOME"), "unreadable")

    def test_etc_and_root_not_writable(self):
        """Only the workspace (plus the private /tmp and $HOME) is writable: the agent cannot
        create files in /etc (e.g. /etc/ld.so.preload) or at the root of its filesystem."""
        self.assertEqual(self.kv.get("ETC"), "readonly")
        self.assertEqual(self.kv.get("ROOTFS"), "readonly")

    def test_private_tmp_and_home(self):
        self.assertEqual(self.kv.get("TMP"), "writable")
        self.assertEqual(self.kv.get("TMPFS"), "tmpfs")
        self.assertFalse(os.path.exists("/tmp/" + self.tmp_name), "the sandbox's /tmp is the host's /tmp")
        self.assertEqual(self.kv.get("HOME"), "writable")
        self.assertEqual(self.kv.get("HOMEFS"), "tmpfs")
        home = self.kv.get("HOMEDIR", "")
        self.assertTrue(home.startswith("/"), home)
        self.assertNotEqual(home, self.srv.env["HOME"], "not the server's HOME")

    def test_only_the_workspace_is_writable(self):
        self.assertEqual(self.kv.get("REPO"), "writable")
        self.assertIn("workspace-probe", self.task["changed_files"])

    def test_pid_namespace(self):
        n = int(self.kv.get("NPROC", "999"))
        self.assertLessEqual(n, 8, self.kv.get("PSLIST"))
        self.assertIn("bwrap", self.kv.get("PID1", ""))
        self.assertLess(int(self.kv.get("MYPID", "999999")), 20)
        ps = self.kv.get("PSLIST", "")
        self.assertNotIn("aicode serve", ps)
        self.assertNotIn("/bin/aicode", ps)
        self.assertNotIn("git_http", ps)
        self.assertEqual(self.kv.get("HOSTNAME"), "aicode-sandbox")

    def test_host_data_dir_invisible(self):
        self.assertEqual(self.kv.get("DATA"), "hidden")
        self.assertEqual(self.kv.get("DB"), "hidden")
        self.assertEqual(self.kv.get("JWT"), "unreadable")

    def test_network_on_by_default(self):
        """Control for the SANDBOX_NETWORK=none test: with the default, the same probes reach
        the host's loopback."""
        self.assertEqual(self.kv.get("TCP"), "open")
        self.assertEqual(self.kv.get("CURL"), "ok")

    def test_sandbox_removed_after_the_run(self):
        self.assertEqual(sandbox_dirs(self.srv), [])


class SandboxNoNetworkTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.repos = GitRepos()
        cls.repos.make("octo/demo", {"README.md": "hi\n"})
        cls.srv = task_server(cls.repos, env={"SANDBOX_NETWORK": "none"})
        cls.tok = cls.srv.token(new_user())
        script = probe_script(os.path.abspath(cls.srv.data_dir), cls.srv.port, "x-" + uuid.uuid4().hex)
        script += "git ls-remote %s >/dev/null 2>&1 && echo AGENTGIT=ok || echo AGENTGIT=failed\n" % \
            cls.repos.url("octo/demo")
        tid = start_task(cls.srv, cls.tok, script, cls.repos.url("octo/demo"))
        cls.task = wait_task(cls.srv, cls.tok, tid)
        cls.kv = parse_kv(assistant_messages(cls.task)[0]) if cls.task["status"] == "completed" else {}

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()
        cls.repos.close()

    def test_clone_still_works(self):
        self.assertEqual(self.task["status"], "completed", self.task["error"])
        self.assertEqual(self.kv.get("UID"), "1000")

    def test_agent_has_no_network(self):
        self.assertEqual(self.kv.get("TCP"), "blocked")
        self.assertEqual(self.kv.get("CURL"), "failed")
        self.assertEqual(self.kv.get("AGENTGIT"), "failed")


if __name__ == "__main__":
    unittest.main()
