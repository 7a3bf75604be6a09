/* Unit tests for host/src/log.c: the redactor every log line passes through. */
#include <string.h>

#include "host/log.h"
#include "tap.h"

static const char *redact(const char *in)
{
    static char out[4096];
    host_redact(in, strlen(in), out, sizeof(out));
    return out;
}

int main(void)
{
    host_log_register_secret("canary-secret-value-0123456789");
    host_log_register_secret("short"); /* under 8 bytes: ignored, would redact common words */

    ok(strcmp(redact("plain text"), "plain text") == 0, "plain text passes unchanged");
    ok(strstr(redact("x canary-secret-value-0123456789 y"), "canary") == NULL,
       "registered secret removed");
    ok(strcmp(redact("a canary-secret-value-0123456789 b"), "a [redacted] b") == 0,
       "secret replaced by marker");
    ok(strcmp(redact("short words"), "short words") == 0,
       "secrets under 8 bytes are not registered");
    ok(strstr(redact("Authorization: Bearer abc.def.ghi"), "abc.def") == NULL,
       "bearer token removed");
    ok(strstr(redact("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"), "eyJ") == NULL,
       "JWT removed");
    ok(strstr(redact("ghp_abcdefghijklmnopqrstuvwxyz0123"), "ghp_") == NULL,
       "GitHub token removed");
    ok(strstr(redact("key=sk-ant-api03-abcdefghijklmnop"), "sk-ant") == NULL,
       "Anthropic key removed");
    ok(strcmp(redact("task-1234567890123456789"), "task-1234567890123456789") == 0,
       "sk- inside a word is not a key");
    ok(strcmp(redact("ghp_short"), "ghp_short") == 0, "a bare prefix without a token body stays");
    ok(strstr(redact("{\"q\":\"canary-secret-value-0123456789\"}"), "canary") == NULL,
       "secret inside JSON removed");

    char small[8];
    size_t n = host_redact("0123456789abcdef", 16, small, sizeof(small));
    ok(n == 7 && small[7] == '\0', "output is truncated and NUL-terminated");
    return tap_done();
}
