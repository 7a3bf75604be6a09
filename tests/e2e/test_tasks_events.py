"""E2E (issue #3): GET /api/tasks/<id>/events, Server-Sent Events: status, step, output
and result events, live while the task runs and stored for late clients, resumable
with Last-Event-ID, ending with `event: end`. EventSource auth: a short-lived token
from POST /api/tasks/<id>/events-token, accepted in the query for that task's events
only."""
import http.client
import json
import time
import unittest

from fakes.tasks_kit import GitRepos, parse_sse, read_sse, start_task, task_server, wait_task
from harness import new_user

LIVE_SCRIPT = "echo line-one\nsleep 1.5\necho line-two\necho to-stderr >&2\necho x > out.txt\n"


def stream_live(srv, path, token):
    """Reads an SSE stream line by line; returns [(arrival_time, event_dict)] and the raw text."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    conn.request("GET", path, headers={"Authorization": "Bearer " + token})
    resp = conn.getresponse()
    arrivals, raw, block = [], [], []
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.decode("utf-8", errors="replace")
        raw.append(line)
        if line in ("\n", "\r\n"):
            evs = parse_sse("".join(block) + "\n\n")
            for e in evs:
                arrivals.append((time.time(), e))
            block = []
        else:
            block.append(line)
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, arrivals, "".join(raw)


class EventsTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.repos = GitRepos()
        cls.repos.make("octo/demo", {"README.md": "hi\n"})
        cls.url = cls.repos.url("octo/demo")
        cls.srv = task_server(cls.repos)
        cls.user = new_user()
        cls.tok = cls.srv.token(cls.user)
        cls.other_tok = cls.srv.token(new_user())
        # One live task, streamed from the start; a second, short one for token scoping.
        cls.tid = start_task(cls.srv, cls.tok, LIVE_SCRIPT, cls.url)
        cls.live = stream_live(cls.srv, "/api/tasks/%d/events" % cls.tid, cls.tok)
        cls.task = wait_task(cls.srv, cls.tok, cls.tid)
        cls.tid2 = start_task(cls.srv, cls.tok, "exit 5\n", cls.url)
        cls.task2 = wait_task(cls.srv, cls.tok, cls.tid2)

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()
        cls.repos.close()

    def events(self):
        return [e for _, e in self.live[2]]

    def test_live_stream_shape(self):
        status, headers, arrivals, raw = self.live
        self.assertEqual(status, 200)
        self.assertTrue(headers.get("content-type", "").startswith("text/event-stream"), headers)
        self.assertEqual(self.task["status"], "completed", self.task["error"])
        evs = self.events()
        self.assertEqual(evs[-1]["event"], "end", raw[-300:])
        self.assertTrue(raw.rstrip().split("\n\n")[-1].startswith("event: end"))
        body = evs[:-1]
        types = {e["event"] for e in body}
        self.assertTrue({"status", "step", "output", "result"} <= types, types)
        ids = [int(e["id"]) for e in body]
        self.assertEqual(ids, sorted(set(ids)), "ids strictly increase")
        for e in body:
            self.assertEqual(e["data"]["type"], e["event"])
            self.assertEqual(str(e["data"]["id"]), e["id"])
            self.assertIsInstance(e["data"]["data"], dict)
        statuses = [e["data"]["data"]["status"] for e in body if e["event"] == "status"]
        self.assertEqual(statuses[0], "pending")
        self.assertIn("running", statuses)
        self.assertEqual(statuses[-1], "completed")
        self.assertLess(statuses.index("running"), len(statuses) - 1)
        texts = [e["data"]["data"].get("text", "") for e in body if e["event"] == "output"]
        self.assertIn("line-one", "\n".join(texts))
        self.assertIn("line-two", "\n".join(texts))
        self.assertIn("to-stderr", "\n".join(texts))
        result = [e["data"]["data"] for e in body if e["event"] == "result"]
        self.assertEqual(len(result), 1)
        self.assertIn("out.txt", json.dumps(result[0]))
        steps = [e["data"]["data"] for e in body if e["event"] == "step"]
        self.assertTrue(any("clone" in s.get("name", "") for s in steps), steps)
        # the result comes before the final status
        kinds = [e["event"] for e in body]
        self.assertLess(kinds.index("result"), len(kinds) - 1)

    def test_stream_is_live(self):
        """line-one reaches the client while the script still sleeps (not replayed at the end)."""
        arrivals = self.live[2]
        t_one = next(t for t, e in arrivals if e["event"] == "output" and "line-one" in json.dumps(e["data"]))
        t_end = next(t for t, e in arrivals if e["event"] == "end")
        self.assertGreater(t_end - t_one, 1.0, "output was not streamed as it happened")

    def test_late_client_gets_the_whole_history(self):
        status, headers, evs, raw = read_sse(self.srv, "/api/tasks/%d/events" % self.tid, token=self.tok)
        self.assertEqual(status, 200)
        self.assertEqual([(e["id"], e["event"], e["data"]) for e in evs],
                         [(e["id"], e["event"], e["data"]) for e in self.events()])

    def test_last_event_id_resumes(self):
        full = self.events()[:-1]
        for k in (0, len(full) // 2, len(full) - 2):
            with self.subTest(after=k):
                last = full[k]["id"]
                status, _, evs, _ = read_sse(self.srv, "/api/tasks/%d/events" % self.tid, token=self.tok,
                                             headers={"Last-Event-ID": last})
                self.assertEqual(status, 200)
                self.assertEqual(evs[-1]["event"], "end")
                self.assertEqual([e["id"] for e in evs[:-1]], [e["id"] for e in full[k + 1:]], "no gap, no duplicate")
        _, _, evs, _ = read_sse(self.srv, "/api/tasks/%d/events" % self.tid, token=self.tok,
                                headers={"Last-Event-ID": full[-1]["id"]})
        self.assertEqual([e["event"] for e in evs], ["end"])

    def test_failed_task_stream(self):
        self.assertEqual(self.task2["status"], "failed")
        _, _, evs, _ = read_sse(self.srv, "/api/tasks/%d/events" % self.tid2, token=self.tok)
        self.assertEqual(evs[-1]["event"], "end")
        statuses = [e["data"]["data"] for e in evs if e["event"] == "status"]
        self.assertEqual(statuses[-1]["status"], "failed")
        self.assertIn("5", statuses[-1].get("error") or "")
        self.assertNotIn(self.tid, [e["data"]["data"].get("task_id") for e in evs[:-1]])
        # events of one task never show in another's stream
        ids1 = {e["id"] for e in self.events()[:-1]}
        self.assertEqual(ids1 & {e["id"] for e in evs[:-1]}, set())

    # -- EventSource auth -----------------------------------------------------------------
    def events_token(self, tid, token=None):
        r = self.srv.request("POST", "/api/tasks/%d/events-token" % tid, token=token or self.tok)
        return r

    def test_events_token_in_query(self):
        r = self.events_token(self.tid)
        self.assertEqual(r.status, 200, r)
        self.assertIsInstance(r.json["token"], str)
        self.assertIs(type(r.json["expires_in"]), int)
        self.assertTrue(0 < r.json["expires_in"] <= 3600, r.json)
        qt = r.json["token"]
        status, headers, evs, _ = read_sse(self.srv, "/api/tasks/%d/events?token=%s" % (self.tid, qt))
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/event-stream"))
        self.assertEqual([e["id"] for e in evs], [e["id"] for e in self.events()])
        # the unprefixed route takes it too
        status, _, _, _ = read_sse(self.srv, "/tasks/%d/events?token=%s" % (self.tid, qt))
        self.assertEqual(status, 200)

    def test_events_token_is_scoped_to_its_task(self):
        qt = self.events_token(self.tid).json["token"]
        r = self.srv.request("GET", "/api/tasks/%d/events?token=%s" % (self.tid2, qt))
        self.assertEqual(r.status, 401, r)
        self.assertIsInstance(r.json.get("error"), str)

    def test_events_token_only_on_the_events_route(self):
        qt = self.events_token(self.tid).json["token"]
        for method, path in (("GET", "/api/tasks/%d" % self.tid), ("GET", "/api/task-status/%d" % self.tid),
                             ("GET", "/api/git-diff/%d" % self.tid), ("GET", "/api/tasks"),
                             ("POST", "/api/tasks/%d/events-token" % self.tid)):
            with self.subTest(path=path):
                r = self.srv.request(method, path + "?token=" + qt)
                self.assertEqual(r.status, 401, r)
                # nor as a bearer token
                r = self.srv.request(method, path, token=qt)
                self.assertEqual(r.status, 401, r)

    def test_access_token_refused_in_query(self):
        r = self.srv.request("GET", "/api/tasks/%d/events?token=%s" % (self.tid, self.tok))
        self.assertEqual(r.status, 401, r)
        r = self.srv.request("GET", "/api/tasks/%d/events?token=garbage" % self.tid)
        self.assertEqual(r.status, 401, r)
        r = self.srv.request("GET", "/api/tasks/%d/events" % self.tid)
        self.assertEqual(r.status, 401, r)

    def test_events_are_owner_scoped(self):
        r = self.srv.request("GET", "/api/tasks/%d/events" % self.tid, token=self.other_tok)
        self.assertEqual(r.status, 404, r)
        r = self.events_token(self.tid, token=self.other_tok)
        self.assertEqual(r.status, 404, r)
        # another user's stream token for their own task does not open ours
        mine = start_task(self.srv, self.other_tok, "true\n", self.url)
        qt = self.events_token(mine, token=self.other_tok).json["token"]
        r = self.srv.request("GET", "/api/tasks/%d/events?token=%s" % (self.tid, qt))
        self.assertIn(r.status, (401, 404), r)
        self.assertNotIn("line-one", r.body)
        wait_task(self.srv, self.other_tok, mine)


if __name__ == "__main__":
    unittest.main()
