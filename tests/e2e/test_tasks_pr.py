"""E2E (issue #3): pull requests. POST /api/create-pr/<id> applies the stored patch on a
fresh clone, pushes aicode/<id> (git_http requires the token for pushes) and opens the
pull request through the fake GitHub REST API (GITHUB_API_URL). The pushed branch must
hold exactly the task's change (deletion, rename, mode change, binary file); a second
call returns the same pull request; a moved base that conflicts is a 409. And
POST /api/validate-token: the user and the repository permissions, no side effects."""
import os
import shutil
import tempfile
import unittest

from fakes.tasks_kit import GitRepos, git_http, github_api, start_task, task_row, task_server, wait_task
from harness import new_user

GOOD = "ghs_pr_good_token_0001"
READ = "ghs_pr_read_token_0002"
BIN = b"\x00\x01\x02\xfe\xff binary\x00\n"

FILES = {"README.md": "# demo\n", "old.txt": "old name\n", "gone.txt": "gone\n", "tool.sh": "echo tool\n",
         "src/app.py": "print('v1')\n"}

CHANGES = r"""set -e
echo "print('v2')" > src/app.py
echo created > created.txt
rm gone.txt
mv old.txt renamed.txt
printf '\000\001\002\376\377 binary\000\n' > assets/new.bin
chmod +x tool.sh
"""


def push_to_main(repos, name, path, content, message="upstream change"):
    """Commits `content` to `path` on main of the bare repo, as another developer would."""
    work = tempfile.mkdtemp(prefix="aicode-upstream-")
    try:
        git_http._git(["clone", "-q", repos.path(name), work])
        with open(os.path.join(work, path), "w") as f:
            f.write(content)
        git_http._git(["add", "-A"], cwd=work)
        git_http._git(["commit", "-q", "-m", message], cwd=work)
        git_http._git(["push", "-q", "origin", "HEAD:main"], cwd=work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


class PullRequestTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.repos = GitRepos(require_token=[GOOD, READ], public=True)
        cls.repos.make("octo/demo", FILES, binary=True, executable=True)
        cls.repos.make("octo/conflict", {"README.md": "line one\nline two\n"})
        cls.repos.make("octo/moved", {"README.md": "line one\n", "other.txt": "other\n"})
        cls.gh, _, _ = github_api.start(root=cls.repos.root, tokens={GOOD: "octocat", READ: ["viewer", "read"]})
        cls.srv = task_server(cls.repos, env={"GITHUB_API_URL": cls.gh.url, "MAX_TASKS_PER_USER": "8",
                                              "MAX_CONCURRENT_TASKS": "8"})
        cls.user = new_user()
        cls.tok = cls.srv.token(cls.user)
        cls.other = cls.srv.token(new_user())
        url = cls.repos.url
        cls.ids = {
            "main": start_task(cls.srv, cls.tok, CHANGES, url("octo/demo")),
            "conflict": start_task(cls.srv, cls.tok, "echo 'task line one' > README.md\n", url("octo/conflict")),
            "moved": start_task(cls.srv, cls.tok, "echo 'line one, task' > README.md\n", url("octo/moved")),
            "badtoken": start_task(cls.srv, cls.tok, "echo x > x.txt\n", url("octo/demo")),
            "readtoken": start_task(cls.srv, cls.tok, "echo r > r.txt\n", url("octo/demo")),
            "failed": start_task(cls.srv, cls.tok, "echo y > y.txt\nexit 3\n", url("octo/demo")),
            "nochange": start_task(cls.srv, cls.tok, "echo nothing\n", url("octo/demo")),
        }
        cls.tasks = {k: wait_task(cls.srv, cls.tok, v) for k, v in cls.ids.items()}
        cls.main_before = cls.repos.branches("octo/demo")["main"]
        cls.pr = cls.create_pr(cls.ids["main"], {"github_token": GOOD, "title": "My PR", "body": "Body text"})

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()
        cls.gh.close()
        cls.repos.close()

    @classmethod
    def create_pr(cls, tid, body, token=None):
        return cls.srv.request("POST", "/api/create-pr/%d" % tid, token=token or cls.tok, body=body)

    def pushes(self):
        return [r for r in self.repos.requests() if r.get("service") == "receive-pack"]

    def test_tasks_ready(self):
        for k, t in self.tasks.items():
            self.assertEqual(t["status"], "failed" if k == "failed" else "completed", (k, t["error"]))

    def test_create_pr_response(self):
        r = self.pr
        self.assertEqual(r.status, 200, r)
        tid = self.ids["main"]
        self.assertEqual(r.json["status"], "success")
        self.assertEqual(r.json["branch"], "aicode/%d" % tid)
        self.assertIs(type(r.json["pr_number"]), int)
        self.assertIsInstance(r.json["pr_url"], str)
        self.assertTrue(r.json["pr_url"].endswith("/pull/%d" % r.json["pr_number"]), r.json)
        self.assertEqual(r.json["files_updated"], len(self.tasks["main"]["changed_files"]))
        pulls = self.gh.pulls["octo/demo"]
        pr = [p for p in pulls if p["number"] == r.json["pr_number"]][0]
        self.assertEqual(pr["head"]["ref"], "aicode/%d" % tid)
        self.assertEqual(pr["base"]["ref"], "main")
        self.assertEqual(pr["title"], "My PR")
        self.assertEqual(pr["body"], "Body text")
        self.assertEqual(pr["html_url"], r.json["pr_url"])

    def test_pushed_branch_holds_exactly_the_change(self):
        tid = self.ids["main"]
        branch = "aicode/%d" % tid
        branches = self.repos.branches("octo/demo")
        self.assertIn(branch, branches)
        self.assertEqual(branches["main"], self.main_before, "main untouched")
        diff = self.repos.git("octo/demo", "diff", "main", branch)
        self.assertEqual(diff, self.tasks["main"]["git_diff"])
        # Binary bytes, modes, deletion and rename, from the remote's tree.
        self.assertEqual(git_http.read_file(self.repos.root, "octo/demo", branch, "assets/new.bin"), BIN)
        tree = git_http.tree(self.repos.root, "octo/demo", branch)
        self.assertEqual(tree["tool.sh"][0], "100755")
        self.assertEqual(tree["scripts/run.sh"][0], "100755")
        self.assertNotIn("gone.txt", tree)
        self.assertNotIn("old.txt", tree)
        self.assertIn("renamed.txt", tree)
        self.assertEqual(git_http.read_file(self.repos.root, "octo/demo", branch, "assets/logo.bin"),
                         git_http.BINARY_BYTES)
        # One commit on top of main.
        parents = self.repos.git("octo/demo", "rev-list", "--parents", "-n", "1", branch).split()
        self.assertEqual(parents[1:], [self.main_before])
        # A full binary-aware diff applies to main and gives the same tree.
        full = self.repos.git("octo/demo", "diff", "--binary", "main", branch)
        self.assertIn("GIT binary patch", full)

    def test_task_row_records_the_pr(self):
        tid = self.ids["main"]
        t = task_row(self.srv, self.tok, tid)
        self.assertEqual(t["pr_url"], self.pr.json["pr_url"])
        self.assertEqual(t["pr_number"], self.pr.json["pr_number"])
        self.assertEqual(t["pr_branch"], "aicode/%d" % tid)
        s = self.srv.request("GET", "/api/task-status/%d" % tid, token=self.tok).json["task"]
        self.assertEqual((s["pr_url"], s["pr_number"]), (self.pr.json["pr_url"], self.pr.json["pr_number"]))

    def test_second_call_returns_the_same_pr(self):
        tid = self.ids["main"]
        pushes, posts = len(self.pushes()), len([r for r in self.gh.requests if r["method"] == "POST"])
        sha = self.repos.branches("octo/demo")["aicode/%d" % tid]
        r = self.create_pr(tid, {"github_token": GOOD})
        self.assertEqual(r.status, 200, r)
        for k in ("pr_url", "pr_number", "branch", "files_updated"):
            self.assertEqual(r.json[k], self.pr.json[k], k)
        self.assertEqual(len(self.pushes()), pushes, "pushed again")
        self.assertEqual(len([x for x in self.gh.requests if x["method"] == "POST"]), posts, "opened another PR")
        self.assertEqual(self.repos.branches("octo/demo")["aicode/%d" % tid], sha)
        self.assertEqual(len([p for p in self.gh.pulls["octo/demo"] if p["head"]["ref"] == "aicode/%d" % tid]), 1)

    def test_moved_base_with_conflict_is_409(self):
        tid = self.ids["conflict"]
        push_to_main(self.repos, "octo/conflict", "README.md", "upstream line one\nline two\n")
        before = self.repos.branches("octo/conflict")
        r = self.create_pr(tid, {"github_token": GOOD})
        self.assertEqual(r.status, 409, r)
        self.assertIsInstance(r.json.get("error"), str)
        self.assertRegex(r.json["error"], r"(?i)main|conflict|apply")
        self.assertNotIn("traceback", r.body.lower())
        self.assertNotIn(GOOD, r.body)
        self.assertEqual(self.repos.branches("octo/conflict"), before, "nothing pushed")
        self.assertEqual(self.gh.pulls.get("octo/conflict", []), [])
        self.assertIsNone(task_row(self.srv, self.tok, tid)["pr_url"])

    def test_moved_base_without_conflict(self):
        tid = self.ids["moved"]
        push_to_main(self.repos, "octo/moved", "other.txt", "other, upstream\n")
        main = self.repos.branches("octo/moved")["main"]
        r = self.create_pr(tid, {"github_token": GOOD})
        self.assertEqual(r.status, 200, r)
        branch = r.json["branch"]
        self.assertEqual(git_http.read_file(self.repos.root, "octo/moved", branch, "README.md"), b"line one, task\n")
        self.assertEqual(git_http.read_file(self.repos.root, "octo/moved", branch, "other.txt"), b"other, upstream\n")
        self.assertEqual(self.repos.git("octo/moved", "merge-base", "main", branch).strip(), main)

    def test_task_not_completed_is_400(self):
        r = self.create_pr(self.ids["failed"], {"github_token": GOOD})
        self.assertEqual(r.status, 400, r)
        tid = start_task(self.srv, self.tok, "sleep 20\n", self.repos.url("octo/demo"))
        r = self.create_pr(tid, {"github_token": GOOD})
        self.assertEqual(r.status, 400, r)
        self.srv.request("POST", "/api/tasks/%d/cancel" % tid, token=self.tok, body={})
        wait_task(self.srv, self.tok, tid)
        for t in (self.ids["failed"], tid):
            self.assertNotIn("aicode/%d" % t, self.repos.branches("octo/demo"))

    def test_no_changes_is_400(self):
        r = self.create_pr(self.ids["nochange"], {"github_token": GOOD})
        self.assertEqual(r.status, 400, r)
        self.assertNotIn("aicode/%d" % self.ids["nochange"], self.repos.branches("octo/demo"))

    def test_token_required(self):
        tid = self.ids["badtoken"]
        for body in ({}, {"github_token": ""}, {"github_token": None}, {"title": "x"}):
            with self.subTest(body=body):
                r = self.create_pr(tid, body)
                self.assertEqual(r.status, 400, r)
        self.assertNotIn("aicode/%d" % tid, self.repos.branches("octo/demo"))

    def test_invalid_token_is_401(self):
        tid = self.ids["badtoken"]
        pushes = len(self.pushes())
        r = self.create_pr(tid, {"github_token": "ghs_not_a_real_token"})
        self.assertEqual(r.status, 401, r)
        self.assertIsInstance(r.json.get("error"), str)
        self.assertNotIn("ghs_not_a_real_token", r.body)
        self.assertNotIn("aicode/%d" % tid, self.repos.branches("octo/demo"))
        self.assertEqual(len([p for p in self.pushes()[pushes:] if p.get("status") == 200]), 0)
        self.assertIsNone(task_row(self.srv, self.tok, tid)["pr_url"])

    def test_read_only_token_cannot_open_a_pr(self):
        tid = self.ids["readtoken"]
        r = self.create_pr(tid, {"github_token": READ})
        self.assertIn(r.status, (401, 403), r)
        self.assertIsInstance(r.json.get("error"), str)
        self.assertIsNone(task_row(self.srv, self.tok, tid)["pr_url"])
        self.assertEqual([p for p in self.gh.pulls.get("octo/demo", []) if p["head"]["ref"] == "aicode/%d" % tid], [])

    def test_another_users_task_is_404(self):
        tid = self.ids["readtoken"]
        r = self.create_pr(tid, {"github_token": GOOD}, token=self.other)
        self.assertEqual(r.status, 404, r)
        self.assertNotIn("aicode/%d" % tid, self.repos.branches("octo/demo"))


class ValidateTokenTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.repos = GitRepos(require_token=[GOOD, READ], public=True)
        cls.repos.make("octo/demo", {"README.md": "hi\n"})
        cls.gh, _, _ = github_api.start(root=cls.repos.root, tokens={GOOD: "octocat", READ: ["viewer", "read"]},
                                        private=["octo/demo"])
        cls.srv = task_server(cls.repos, env={"GITHUB_API_URL": cls.gh.url})
        cls.tok = cls.srv.token(new_user())
        cls.url = cls.repos.url("octo/demo")

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()
        cls.gh.close()
        cls.repos.close()

    def validate(self, body):
        return self.srv.request("POST", "/api/validate-token", token=self.tok, body=body)

    def test_write_token(self):
        before = self.repos.branches("octo/demo")
        git_requests = len(self.repos.requests())
        r = self.validate({"github_token": GOOD, "repo_url": self.url})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "success")
        self.assertEqual(r.json["user"], "octocat")
        repo = r.json["repo"]
        self.assertEqual(repo["name"], "octo/demo")
        self.assertIs(repo["private"], True)
        self.assertEqual(repo["default_branch"], "main")
        self.assertIs(repo["permissions"]["read"], True)
        self.assertIs(repo["permissions"]["write"], True)
        self.assertEqual(self.repos.branches("octo/demo"), before, "validate-token created a branch")
        self.assertEqual(len(self.repos.requests()), git_requests, "validate-token talked to the git server")
        self.assertEqual([x for x in self.gh.requests if x["method"] != "GET"], [], "only reads on the GitHub API")

    def test_read_token(self):
        r = self.validate({"github_token": READ, "repo_url": self.url})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["user"], "viewer")
        self.assertIs(r.json["repo"]["permissions"]["write"], False)
        self.assertIs(r.json["repo"]["permissions"]["read"], True)

    def test_without_repo(self):
        r = self.validate({"github_token": GOOD})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["user"], "octocat")

    def test_invalid_token(self):
        r = self.validate({"github_token": "ghs_invalid_0000", "repo_url": self.url})
        self.assertEqual(r.status, 401, r)
        self.assertNotIn("ghs_invalid_0000", r.body)

    def test_missing_token(self):
        for body in ({}, {"github_token": ""}, {"repo_url": self.url}):
            with self.subTest(body=body):
                self.assertEqual(self.validate(body).status, 400)

    def test_repo_url_rules_apply(self):
        for url in ("file:///tmp/x/y", "https://evil.example/octo/demo", "%s?x=1" % self.url):
            with self.subTest(url=url):
                self.assertEqual(self.validate({"github_token": GOOD, "repo_url": url}).status, 400)
        self.assertEqual([b for b in self.repos.branches("octo/demo")], ["main"])


if __name__ == "__main__":
    unittest.main()
