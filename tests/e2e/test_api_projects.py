"""E2E: the projects API (seed-contract §1.4; issue #2): CRUD with exact field names and
JSON types, ordering, GitHub URL rules, no mass assignment, 409 on duplicates, the
project's tasks (rows inserted with SQL on the active store), id parsing, the unprefixed
routes and ownership (another user's project is a 404 everywhere).
"""
import datetime
import json
import os
import re
import time
import unittest

from harness import Server, new_user

ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
PROJECT_KEYS = {"id", "user_id", "repo_url", "repo_name", "repo_owner", "name", "description",
                "is_active", "settings", "created_at", "updated_at", "task_count", "completed_tasks",
                "active_tasks"}
OPTIONAL_PROJECT_KEYS = {"is_test_data"}
TASK_KEYS = {"id", "user_id", "project_id", "status", "agent", "repo_url", "target_branch", "pr_branch",
             "container_id", "commit_hash", "pr_number", "pr_url", "git_diff", "git_patch", "changed_files",
             "error", "chat_messages", "execution_metadata", "created_at", "updated_at", "started_at",
             "completed_at"}

_counter = [0]


def unique_repo(owner="octo"):
    _counter[0] += 1
    return "https://github.com/%s/repo-%d-%d" % (owner, os.getpid(), _counter[0])


def parse_iso(s):
    return datetime.datetime.strptime(s.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")


class ProjectsTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # ENGINE=off: these tests insert task rows straight into the store; a running
        # engine would claim the pending ones and change the counts under the test.
        cls.srv = Server(env={"ENGINE": "off"})

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()

    # -- helpers ---------------------------------------------------------------
    def user(self):
        uid = new_user()
        return uid, self.srv.token(uid)

    def req(self, method, path, token, **kw):
        return self.srv.request(method, path, token=token, **kw)

    def create(self, token, prefix="/api", **fields):
        body = {"name": "proj", "repo_url": unique_repo()}
        body.update(fields)
        r = self.req("POST", prefix + "/projects", token, body=body)
        self.assertEqual(r.status, 200, r)
        return r.json["project"]

    def get(self, token, pid, prefix="/api"):
        return self.req("GET", "%s/projects/%s" % (prefix, pid), token)

    def assertJsonError(self, r, status, message=None):
        self.assertEqual(r.status, status, r)
        self.assertTrue(r.headers.get("content-type", "").startswith("application/json"), r.headers)
        self.assertIsInstance(r.json, dict, r)
        self.assertEqual(set(r.json), {"error", "request_id"}, r)
        self.assertEqual(r.headers.get("x-request-id"), r.json["request_id"])
        if message is not None:
            self.assertEqual(r.json["error"], message, r)

    def assertProjectShape(self, p, user_id):
        keys = set(p)
        self.assertTrue(PROJECT_KEYS <= keys, PROJECT_KEYS - keys)
        self.assertTrue(keys <= PROJECT_KEYS | OPTIONAL_PROJECT_KEYS, keys - PROJECT_KEYS)
        self.assertIs(type(p["id"]), int)
        self.assertGreater(p["id"], 0)
        self.assertEqual(p["user_id"], user_id)
        for k in ("repo_url", "repo_name", "repo_owner", "name", "description", "created_at", "updated_at"):
            self.assertIs(type(p[k]), str, k)
        self.assertIs(type(p["is_active"]), bool)
        self.assertIs(type(p["settings"]), dict)
        for k in ("task_count", "completed_tasks", "active_tasks"):
            self.assertIs(type(p[k]), int, k)
        for k in ("created_at", "updated_at"):
            self.assertRegex(p[k], ISO_UTC)
            ts = parse_iso(p[k])
            delta = abs((datetime.datetime.now(datetime.timezone.utc) - ts).total_seconds())
            self.assertLess(delta, 3600, "%s is not current UTC: %s" % (k, p[k]))

    def sql(self, sql):
        """SQL on the active store (SQLite file, or the Supabase test database)."""
        return self.srv.sql(sql)

    # -- create / read ----------------------------------------------------------
    def test_create_exact_fields_and_types(self):
        uid, tok = self.user()
        settings = {"a": [], "b": {}, "n": 42, "neg": -7, "f": 1.5, "p": 0.1, "big": 9007199254740993,
                    "t": True, "nul": None, "s": "x", "arr": [1, "a", None, [], {}, 2.5]}
        url = unique_repo("Some-Owner")
        r = self.req("POST", "/api/projects", tok,
                     body={"name": "My project", "description": "desc", "repo_url": url, "settings": settings})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.headers.get("content-type"), "application/json")
        self.assertEqual(set(r.json), {"status", "project"})
        self.assertEqual(r.json["status"], "success")
        p = r.json["project"]
        self.assertProjectShape(p, uid)
        self.assertEqual(p["name"], "My project")
        self.assertEqual(p["description"], "desc")
        self.assertEqual(p["repo_url"], url)
        self.assertEqual(p["repo_owner"], "Some-Owner")
        self.assertEqual(p["repo_name"], url.rsplit("/", 1)[1])
        self.assertIs(p["is_active"], True)
        self.assertEqual(p["settings"], settings)
        self.assertEqual((p["task_count"], p["completed_tasks"], p["active_tasks"]), (0, 0, 0))
        self.assertEqual(p["created_at"], p["updated_at"])
        raw = r.body
        self.assertRegex(raw, r'"id":%d[,}]' % p["id"])  # an integer, never 42.0
        self.assertNotRegex(raw, r'"id":\d+\.')
        self.assertIn('"a":[]', raw)
        self.assertIn('"b":{}', raw)
        self.assertIn('"n":42,', raw)
        self.assertIn('"big":9007199254740993', raw)
        self.assertIn('"nul":null', raw)
        self.assertIn('"is_active":true', raw)
        self.assertIn('"task_count":0', raw)
        # The same row comes back from GET, byte-identical in meaning.
        g = self.get(tok, p["id"])
        self.assertEqual(g.status, 200)
        self.assertEqual(g.json, {"status": "success", "project": p})
        self.assertIn('"a":[]', g.body)

    def test_create_defaults(self):
        uid, tok = self.user()
        url = unique_repo()
        r = self.req("POST", "/api/projects", tok, body={"name": "n", "repo_url": url})
        self.assertEqual(r.status, 200, r)
        p = r.json["project"]
        self.assertProjectShape(p, uid)
        self.assertEqual(p["description"], "")
        self.assertEqual(p["settings"], {})
        self.assertIn('"settings":{}', r.body)
        self.assertIs(p["is_active"], True)
        p2 = self.create(tok, is_active=False)
        self.assertIs(p2["is_active"], False)
        self.assertIn('"is_active":false', self.get(tok, p2["id"]).body)
        p3 = self.create(tok, settings={"only": []})
        self.assertIn('"settings":{"only":[]}', self.get(tok, p3["id"]).body)

    def test_list_shape_and_ordering(self):
        uid, tok = self.user()
        r = self.req("GET", "/api/projects", tok)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json, {"status": "success", "projects": []})
        self.assertIn('"projects":[]', r.body)
        made = []
        for i in range(4):
            made.append(self.create(tok, name="p%d" % i))
            time.sleep(0.005)
        r = self.req("GET", "/api/projects", tok)
        self.assertEqual(r.status, 200)
        projects = r.json["projects"]
        self.assertIs(type(projects), list)
        self.assertEqual([p["id"] for p in projects], [p["id"] for p in reversed(made)])
        created = [p["created_at"] for p in projects]
        self.assertEqual(created, sorted(created, reverse=True))
        for p in projects:
            self.assertProjectShape(p, uid)
        self.assertEqual(projects[-1], made[0])

    def test_project_task_counts(self):
        uid, tok = self.user()
        p = self.create(tok)
        self.sql("INSERT INTO tasks (user_id, project_id, status) VALUES "
                    "('%s', %d, 'completed'), ('%s', %d, 'pending'), ('%s', %d, 'running'), ('%s', %d, 'failed')"
                    % (uid, p["id"], uid, p["id"], uid, p["id"], uid, p["id"]))
        g = self.get(tok, p["id"]).json["project"]
        self.assertEqual((g["task_count"], g["completed_tasks"], g["active_tasks"]), (4, 1, 2))
        listed = [x for x in self.req("GET", "/api/projects", tok).json["projects"] if x["id"] == p["id"]][0]
        self.assertEqual((listed["task_count"], listed["completed_tasks"], listed["active_tasks"]), (4, 1, 2))

    # -- GitHub URL rules ---------------------------------------------------------
    def test_github_urls_accepted(self):
        uid, tok = self.user()
        n = [0]

        def name():
            n[0] += 1
            return "r%d-%d" % (os.getpid(), n[0])

        cases = []
        for fmt in ("https://github.com/{o}/{r}", "https://github.com/{o}/{r}.git", "https://github.com/{o}/{r}/",
                    "git@github.com:{o}/{r}.git", "git@github.com:{o}/{r}", "https://github.com/{o}/{r}.git/"):
            owner, repo = "own-er_1", name() + ".js"
            cases.append((fmt.format(o=owner, r=repo), owner, repo))
        for url, owner, repo in cases:
            with self.subTest(url=url):
                r = self.req("POST", "/api/projects", tok, body={"name": "n", "repo_url": url})
                self.assertEqual(r.status, 200, r)
                p = r.json["project"]
                self.assertEqual(p["repo_url"], url, "repo_url is stored as given")
                self.assertEqual(p["repo_owner"], owner)
                self.assertEqual(p["repo_name"], repo)

    def test_github_urls_rejected(self):
        uid, tok = self.user()
        bad = [
            "http://github.com/o/r", "https://www.github.com/o/r", "https://github.com/o/r/tree/main",
            "https://github.com/o/r/pulls", "https://github.com/o", "https://github.com/o/",
            "https://github.com//r", "https://github.com/", "https://github.com", "https://gitlab.com/o/r",
            "https://github.com.evil.com/o/r", "https://evil.com/github.com/o/r", "file:///etc/passwd",
            "file://github.com/o/r", "ssh://git@github.com/o/r.git", "git@gitlab.com:o/r.git",
            "git@github.com:/r.git", "git@github.com:o/.git", "git@github.com:o/r/x.git", "github.com/o/r",
            "https://github.com/o/r;rm -rf /", "https://github.com/../r", "https://github.com/o/..",
            "https://user:pw@github.com/o/r", "https://github.com:8443/o/r", "ftp://github.com/o/r",
            " https://github.com/o/r", "https://github.com/o/r\n",
        ]
        for url in bad:
            with self.subTest(url=url):
                r = self.req("POST", "/api/projects", tok, body={"name": "n", "repo_url": url})
                self.assertJsonError(r, 400, "Invalid GitHub URL format: " + url)
        self.assertEqual(self.req("GET", "/api/projects", tok).json["projects"], [])

    def test_required_fields(self):
        uid, tok = self.user()
        msg = "name and repo_url are required"
        for body in ({"name": "x"}, {"repo_url": unique_repo()}, {"name": "", "repo_url": unique_repo()},
                     {"name": "x", "repo_url": ""}, {"name": None, "repo_url": unique_repo()},
                     {"description": "only"}):
            with self.subTest(body=body):
                self.assertJsonError(self.req("POST", "/api/projects", tok, body=body), 400, msg)
        self.assertJsonError(self.req("POST", "/api/projects", tok, body={}), 400)
        self.assertJsonError(self.req("POST", "/api/projects", tok), 400)
        self.assertEqual(self.req("GET", "/api/projects", tok).json["projects"], [])

    def test_duplicate_repo_url_conflict(self):
        uid, tok = self.user()
        url = unique_repo()
        first = self.create(tok, repo_url=url)
        r = self.req("POST", "/api/projects", tok, body={"name": "again", "repo_url": url})
        self.assertJsonError(r, 409)
        self.assertEqual([p["id"] for p in self.req("GET", "/api/projects", tok).json["projects"]], [first["id"]])
        # Another user may use the same repository.
        uid2, tok2 = self.user()
        r = self.req("POST", "/api/projects", tok2, body={"name": "mine", "repo_url": url})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["project"]["user_id"], uid2)

    # -- update ---------------------------------------------------------------
    def test_update_allowed_fields(self):
        uid, tok = self.user()
        p = self.create(tok, description="old", settings={"k": 1})
        time.sleep(0.01)
        r = self.req("PUT", "/api/projects/%d" % p["id"], tok,
                     body={"name": "renamed", "description": "new", "settings": {"x": [], "y": {"z": None}},
                           "is_active": False})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(set(r.json), {"status", "project"})
        u = r.json["project"]
        self.assertProjectShape(u, uid)
        self.assertEqual(u["id"], p["id"])
        self.assertEqual(u["name"], "renamed")
        self.assertEqual(u["description"], "new")
        self.assertEqual(u["settings"], {"x": [], "y": {"z": None}})
        self.assertIn('"x":[]', r.body)
        self.assertIs(u["is_active"], False)
        self.assertEqual(u["repo_url"], p["repo_url"])
        self.assertEqual(u["created_at"], p["created_at"])
        self.assertGreater(parse_iso(u["updated_at"]), parse_iso(p["updated_at"]))
        self.assertEqual(self.get(tok, p["id"]).json["project"], u)
        # A partial update leaves the other fields alone; settings can become empty.
        r = self.req("PUT", "/api/projects/%d" % p["id"], tok, body={"is_active": True, "settings": {}})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["project"]["name"], "renamed")
        self.assertIs(r.json["project"]["is_active"], True)
        self.assertIn('"settings":{}', r.body)

    def test_update_rejects_read_only_fields(self):
        uid, tok = self.user()
        other = new_user()
        self.srv.tokens(other)
        p = self.create(tok)
        before = self.get(tok, p["id"]).json["project"]
        for body in ({"user_id": other}, {"id": 999999}, {"created_at": "2000-01-01T00:00:00.000Z"},
                     {"updated_at": "2000-01-01T00:00:00.000Z"}, {"repo_owner": "evil"}, {"repo_name": "evil"},
                     {"task_count": 5}, {"name": "sneaky", "user_id": other}, {"name": "sneaky", "id": 1},
                     {"is_test_data": True}):
            with self.subTest(body=body):
                r = self.req("PUT", "/api/projects/%d" % p["id"], tok, body=body)
                self.assertJsonError(r, 400)
                self.assertEqual(self.get(tok, p["id"]).json["project"], before)
        # The project did not move to the other user.
        tok_other = self.srv.token(other)
        self.assertEqual(self.req("GET", "/api/projects", tok_other).json["projects"], [])

    def test_update_repo_url_reparses(self):
        uid, tok = self.user()
        p = self.create(tok)
        new_url = "git@github.com:NewOwner/new-repo%d.git" % os.getpid()
        r = self.req("PUT", "/api/projects/%d" % p["id"], tok, body={"repo_url": new_url})
        self.assertEqual(r.status, 200, r)
        u = r.json["project"]
        self.assertEqual(u["repo_url"], new_url)
        self.assertEqual(u["repo_owner"], "NewOwner")
        self.assertEqual(u["repo_name"], "new-repo%d" % os.getpid())
        self.assertEqual(self.get(tok, p["id"]).json["project"], u)

    def test_update_invalid_values(self):
        uid, tok = self.user()
        p = self.create(tok)
        before = self.get(tok, p["id"]).json["project"]
        path = "/api/projects/%d" % p["id"]
        self.assertJsonError(self.req("PUT", path, tok, body={"repo_url": "http://github.com/o/r"}), 400,
                             "Invalid GitHub URL format: http://github.com/o/r")
        for body in ({}, {"name": ""}, {"name": 5}, {"settings": []}, {"settings": "x"}, {"is_active": "yes"},
                     {"description": 3}, {"repo_url": 7}):
            with self.subTest(body=body):
                self.assertJsonError(self.req("PUT", path, tok, body=body), 400)
        self.assertJsonError(self.req("PUT", path, tok), 400)
        self.assertEqual(self.get(tok, p["id"]).json["project"], before)

    def test_update_to_duplicate_repo_url_conflict(self):
        uid, tok = self.user()
        a, b = self.create(tok), self.create(tok)
        r = self.req("PUT", "/api/projects/%d" % b["id"], tok, body={"repo_url": a["repo_url"], "name": "zzz"})
        self.assertJsonError(r, 409)
        self.assertEqual(self.get(tok, b["id"]).json["project"], b)

    def test_update_missing_project(self):
        uid, tok = self.user()
        r = self.req("PUT", "/api/projects/987654321", tok, body={"name": "x"})
        self.assertJsonError(r, 404, "Project not found")

    # -- delete ---------------------------------------------------------------
    def test_delete(self):
        uid, tok = self.user()
        keep, p = self.create(tok), self.create(tok)
        self.sql("INSERT INTO tasks (user_id, project_id) VALUES ('%s', %d)" % (uid, p["id"]))
        r = self.req("DELETE", "/api/projects/%d" % p["id"], tok)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json, {"status": "success", "message": "Project deleted successfully"})
        self.assertJsonError(self.get(tok, p["id"]), 404, "Project not found")
        self.assertJsonError(self.req("GET", "/api/projects/%d/tasks" % p["id"], tok), 404, "Project not found")
        self.assertJsonError(self.req("DELETE", "/api/projects/%d" % p["id"], tok), 404, "Project not found")
        self.assertJsonError(self.req("PUT", "/api/projects/%d" % p["id"], tok, body={"name": "x"}), 404,
                             "Project not found")
        self.assertEqual([x["id"] for x in self.req("GET", "/api/projects", tok).json["projects"]], [keep["id"]])
        # Its tasks went with it (FK cascade).
        self.assertEqual(self.sql("SELECT count(*) AS n FROM tasks WHERE project_id = %d" % p["id"])[0]["n"], 0)
        # The repo_url can be reused after the delete.
        self.assertEqual(self.req("POST", "/api/projects", tok,
                                  body={"name": "again", "repo_url": p["repo_url"]}).status, 200)

    # -- tasks of a project ---------------------------------------------------------
    def test_project_tasks_empty(self):
        uid, tok = self.user()
        p = self.create(tok)
        r = self.req("GET", "/api/projects/%d/tasks" % p["id"], tok)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json, {"status": "success", "tasks": []})
        self.assertIn('"tasks":[]', r.body)

    def test_project_tasks_rows(self):
        uid, tok = self.user()
        p, other_project = self.create(tok), self.create(tok)
        uid_b, tok_b = self.user()
        file_changes = [{"filename": "a.py", "before": "FILE_NOT_EXISTS", "after": "print(1)\n"}]
        meta = {"file_changes": file_changes, "completed_at": "2026-01-01T00:00:00Z", "n": 3}
        chat = [{"role": "user", "content": "add a \"feature\"\nplease", "timestamp": 1700000000.25},
                {"role": "assistant", "content": "done", "timestamp": "2026-01-01T00:00:01"}]

        def q(s):
            return "'" + s.replace("'", "''") + "'"

        self.sql(
            "INSERT INTO tasks (user_id, project_id, status, agent, repo_url, target_branch, commit_hash, "
            "pr_number, pr_url, git_diff, changed_files, chat_messages, execution_metadata, created_at) VALUES "
            "(%s, %d, 'completed', 'codex', %s, 'dev', 'abc123', 17, 'https://github.com/o/r/pull/17', "
            "'diff --git a b', %s, %s, %s, '2026-01-01T00:00:00.000Z');"
            % (q(uid), p["id"], q(p["repo_url"]), q(json.dumps(["a.py", "dir/b.txt"])), q(json.dumps(chat)),
               q(json.dumps(meta)))
            + "INSERT INTO tasks (user_id, project_id, created_at) VALUES (%s, %d, '2026-02-01T00:00:00.000Z');"
            % (q(uid), p["id"])
            + "INSERT INTO tasks (user_id, project_id) VALUES (%s, %d);" % (q(uid), other_project["id"])
            # A row of another user pointing at this project must not show up.
            + "INSERT INTO tasks (user_id, project_id) VALUES (%s, %d);" % (q(uid_b), p["id"]))
        r = self.req("GET", "/api/projects/%d/tasks" % p["id"], tok)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "success")
        tasks = r.json["tasks"]
        self.assertIs(type(tasks), list)
        self.assertEqual(len(tasks), 2, tasks)
        newer, full = tasks  # created_at desc
        for t in tasks:
            self.assertTrue(TASK_KEYS <= set(t), TASK_KEYS - set(t))
            self.assertIs(type(t["id"]), int)
            self.assertIs(type(t["project_id"]), int)
            self.assertEqual(t["project_id"], p["id"])
            self.assertEqual(t["user_id"], uid)
            self.assertIs(type(t["changed_files"]), list)
            self.assertIs(type(t["chat_messages"]), list)
            self.assertIs(type(t["execution_metadata"]), dict)
            self.assertRegex(t["created_at"], ISO_UTC)
        self.assertEqual(full["status"], "completed")
        self.assertEqual(full["agent"], "codex")
        self.assertEqual(full["target_branch"], "dev")
        self.assertEqual(full["commit_hash"], "abc123")
        self.assertIs(type(full["pr_number"]), int)
        self.assertEqual(full["pr_number"], 17)
        self.assertEqual(full["pr_url"], "https://github.com/o/r/pull/17")
        self.assertEqual(full["changed_files"], ["a.py", "dir/b.txt"])
        self.assertEqual(full["chat_messages"], chat)
        self.assertEqual(full["execution_metadata"], meta)
        self.assertIsNone(full["error"])
        self.assertIsNone(full["started_at"])
        self.assertEqual(newer["status"], "pending")
        self.assertEqual(newer["agent"], "claude")
        self.assertEqual(newer["target_branch"], "main")
        self.assertEqual(newer["changed_files"], [])
        self.assertEqual(newer["chat_messages"], [])
        self.assertEqual(newer["execution_metadata"], {})
        self.assertIsNone(newer["pr_number"])
        raw = r.body
        self.assertIn('"changed_files":[]', raw)
        self.assertIn('"chat_messages":[]', raw)
        self.assertIn('"execution_metadata":{}', raw)
        self.assertIn('"pr_number":17,', raw)
        self.assertIn('"timestamp":1700000000.25', raw)
        # Owner B sees nothing of A's project, not even through B's own task row.
        self.assertJsonError(self.req("GET", "/api/projects/%d/tasks" % p["id"], tok_b), 404, "Project not found")

    # -- ids and routes ---------------------------------------------------------
    def test_non_integer_and_huge_ids(self):
        uid, tok = self.user()
        p = self.create(tok)
        for bad in ("abc", "1.5", "99999999999999999999", "-1", "0x10", "1e3", "%31", "1abc", " 1",
                    "9223372036854775808", "999999999999999999", "0", str(p["id"]) + ".0"):
            for method, suffix in (("GET", ""), ("PUT", ""), ("DELETE", ""), ("GET", "/tasks")):
                with self.subTest(id=bad, method=method, suffix=suffix):
                    path = "/api/projects/%s%s" % (bad.replace(" ", "%20"), suffix)
                    body = {"name": "x"} if method == "PUT" else None
                    r = self.req(method, path, tok, body=body)
                    self.assertJsonError(r, 404)
        self.assertEqual(self.get(tok, p["id"]).json["project"], p)

    def test_unprefixed_routes(self):
        uid, tok = self.user()
        r = self.req("GET", "/projects", tok)
        self.assertEqual(r.json, {"status": "success", "projects": []})
        p = self.create(tok, prefix="")
        self.assertProjectShape(p, uid)
        self.assertEqual(self.get(tok, p["id"], prefix="").json, {"status": "success", "project": p})
        self.assertEqual(self.get(tok, p["id"], prefix="/api").json["project"], p)
        self.assertEqual([x["id"] for x in self.req("GET", "/projects", tok).json["projects"]], [p["id"]])
        r = self.req("PUT", "/projects/%d" % p["id"], tok, body={"name": "via-unprefixed"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.get(tok, p["id"]).json["project"]["name"], "via-unprefixed")
        r = self.req("GET", "/projects/%d/tasks" % p["id"], tok)
        self.assertEqual(r.json, {"status": "success", "tasks": []})
        self.assertJsonError(self.req("POST", "/projects", tok, body={"name": "n", "repo_url": "http://x"}), 400)
        self.assertJsonError(self.req("PUT", "/projects/%d" % p["id"], tok, body={"user_id": uid}), 400)
        self.assertJsonError(self.srv.request("GET", "/projects"), 401, "Missing authorization header")
        self.assertJsonError(self.req("GET", "/projects/abc", tok), 404)
        r = self.req("DELETE", "/projects/%d" % p["id"], tok)
        self.assertEqual(r.json, {"status": "success", "message": "Project deleted successfully"})
        self.assertJsonError(self.get(tok, p["id"], prefix=""), 404, "Project not found")

    def test_authentication_required(self):
        for method, path in (("GET", "/api/projects"), ("POST", "/api/projects"), ("GET", "/api/projects/1"),
                             ("PUT", "/api/projects/1"), ("DELETE", "/api/projects/1"),
                             ("GET", "/api/projects/1/tasks")):
            with self.subTest(method=method, path=path):
                self.assertJsonError(self.srv.request(method, path), 401, "Missing authorization header")

    # -- ownership --------------------------------------------------------------
    def test_ownership(self):
        uid_a, tok_a = self.user()
        uid_b, tok_b = self.user()
        p = self.create(tok_a, settings={"secret": "of A"})
        self.sql("INSERT INTO tasks (user_id, project_id) VALUES ('%s', %d)" % (uid_a, p["id"]))
        before = self.get(tok_a, p["id"]).json["project"]
        path = "/api/projects/%d" % p["id"]
        self.assertJsonError(self.req("GET", path, tok_b), 404, "Project not found")
        self.assertJsonError(self.req("PUT", path, tok_b, body={"name": "hijacked"}), 404, "Project not found")
        self.assertJsonError(self.req("PUT", path, tok_b, body={"is_active": False, "settings": {}}), 404,
                             "Project not found")
        self.assertJsonError(self.req("DELETE", path, tok_b), 404, "Project not found")
        self.assertJsonError(self.req("GET", path + "/tasks", tok_b), 404, "Project not found")
        self.assertJsonError(self.req("GET", path, tok_b, headers={"X-User-ID": uid_a}), 404, "Project not found")
        for prefix in ("", "/api"):
            self.assertJsonError(self.req("GET", "%s/projects/%d" % (prefix, p["id"]), tok_b), 404)
        self.assertEqual(self.req("GET", "/api/projects", tok_b).json["projects"], [])
        # B creating the same repository makes B's own project, not a conflict with A's.
        r = self.req("POST", "/api/projects", tok_b, body={"name": "b", "repo_url": p["repo_url"]})
        self.assertEqual(r.status, 200, r)
        self.assertNotEqual(r.json["project"]["id"], p["id"])
        self.assertEqual([x["id"] for x in self.req("GET", "/api/projects", tok_b).json["projects"]],
                         [r.json["project"]["id"]])
        # A's project is untouched, tasks included.
        self.assertEqual(self.get(tok_a, p["id"]).json["project"], before)
        self.assertEqual(len(self.req("GET", path + "/tasks", tok_a).json["tasks"]), 1)
        self.assertEqual([x["id"] for x in self.req("GET", "/api/projects", tok_a).json["projects"]], [p["id"]])


if __name__ == "__main__":
    unittest.main()
