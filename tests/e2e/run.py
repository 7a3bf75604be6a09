"""Runs tests/e2e/test_*.py with unittest and prints TAP lines (ok / not ok) so
tests/run.sh can count them. Exit status 1 when anything failed."""
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


class TapResult(unittest.TextTestResult):
    n = 0

    def _line(self, ok, test, note=""):
        TapResult.n += 1
        print("%s %d - %s%s" % ("ok" if ok else "not ok", TapResult.n, test.id(), note), flush=True)

    def addSuccess(self, test):
        super().addSuccess(test)
        self._line(True, test)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._line(False, test)
        print("# " + self._exc_info_to_string(err, test).replace("\n", "\n# "), flush=True)

    def addError(self, test, err):
        super().addError(test, err)
        self._line(False, test)
        print("# " + self._exc_info_to_string(err, test).replace("\n", "\n# "), flush=True)

    def addSubTest(self, test, subtest, err):
        # Subtest failures never reach addFailure: report each one as its own line.
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._line(False, subtest)
            print("# " + self._exc_info_to_string(err, test).replace("\n", "\n# "), flush=True)

    def addSkip(self, test, reason):
        # A skipped test is not a pass: report it as a failure so nothing goes green by skipping.
        super().addSkip(test, reason)
        self._line(False, test, " # skipped: " + reason)


def main():
    pattern = sys.argv[1] if len(sys.argv) > 1 else "test_*.py"
    suite = unittest.defaultTestLoader.discover(HERE, pattern=pattern, top_level_dir=HERE)
    runner = unittest.TextTestRunner(resultclass=TapResult, stream=open(os.devnull, "w"), verbosity=0)
    result = runner.run(suite)
    print("1..%d" % TapResult.n)
    bad = len(result.failures) + len(result.errors) + len(result.skipped)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
