/* Unit tests for host/src/config.c: .env parsing and environment validation. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "host/config.h"
#include "tap.h"

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    fputs(text, fp);
    fclose(fp);
}

int main(void)
{
    char dir[] = "/tmp/aicode-config-XXXXXX", path[256], err[256], problems[4096];
    mkdtemp(dir);
    snprintf(path, sizeof(path), "%s/.env", dir);

    setenv("AICODE_TEST_KEEP", "from-env", 1);
    write_file(path, "# comment\n\nAICODE_TEST_A=1\nexport AICODE_TEST_B = \"two words\"\n"
                     "AICODE_TEST_C='single'\nAICODE_TEST_KEEP=from-file\n");
    ok(host_config_load_dotenv(path, err, sizeof(err)) == 0, ".env loads");
    ok(strcmp(getenv("AICODE_TEST_A"), "1") == 0, "plain value");
    ok(strcmp(getenv("AICODE_TEST_B"), "two words") == 0, "export prefix and double quotes");
    ok(strcmp(getenv("AICODE_TEST_C"), "single") == 0, "single quotes");
    ok(strcmp(getenv("AICODE_TEST_KEEP"), "from-env") == 0, "the real environment wins");

    write_file(path, "GOOD=1\nnot a pair\n");
    ok(host_config_load_dotenv(path, err, sizeof(err)) == -1 && strstr(err, ":2:") != NULL,
       "malformed line reported with its line number (%s)", err);
    snprintf(path, sizeof(path), "%s/missing.env", dir);
    ok(host_config_load_dotenv(path, err, sizeof(err)) == 0, "a missing .env is not an error");

    ok(host_config_read(problems, sizeof(problems)) == 0, "defaults are valid");
    ok(host_config.port == 8000 && strcmp(host_config.host, "127.0.0.1") == 0,
       "default 127.0.0.1:8000");
    ok(host_config.max_body == 1024 * 1024, "default body limit 1 MiB");
    ok(host_config.access_ttl_s == 3600, "access tokens last 60 minutes");

    setenv("PORT", "99999", 1);
    setenv("WORKERS", "abc", 1);
    setenv("JWT_SECRET", "too-short", 1);
    setenv("TLS_CERT", "/nonexistent.pem", 1);
    int n = host_config_read(problems, sizeof(problems));
    ok(n == 5, "five problems reported (%d)", n);
    ok(strstr(problems, "PORT must be an integer between 0 and 65535") != NULL, "PORT range");
    ok(strstr(problems, "WORKERS") != NULL, "WORKERS not an integer");
    ok(strstr(problems, "JWT_SECRET must be at least 32 bytes") != NULL,
       "short JWT_SECRET refused");
    ok(strstr(problems, "TLS_CERT and TLS_KEY must be set together") != NULL, "TLS pair");
    ok(strstr(problems, "TLS_CERT: cannot read /nonexistent.pem") != NULL,
       "unreadable certificate");
    ok(strstr(problems, "too-short") == NULL, "the secret itself is not echoed");

    snprintf(path, sizeof(path), "%s/.env", dir);
    unlink(path);
    rmdir(dir);
    return tap_done();
}
