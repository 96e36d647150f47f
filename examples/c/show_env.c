/*
 * Print whether each variable reads as a resolved secret through getenv(3), never its value.
 *
 * Build: cc -o show_env show_env.c
 * Usage: show_env [NAME...]   (default: the keys of examples/secrets.json)
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const default_names[] = {
    "DATABASE_URL", "API_KEY", "STRIPE_SECRET_KEY", "JWT_SIGNING_KEY", "REDIS_PASSWORD",
};

static int is_reference(const char *value)
{
    return strncmp(value, "vault:", strlen("vault:")) == 0 ||
           strncmp(value, "envproxy:", strlen("envproxy:")) == 0;
}

static void show(const char *name)
{
    const char *value = getenv(name);

    if (value == NULL)
        printf("%s: not set\n", name);
    else if (is_reference(value))
        /* A reference names where the secret lives. It is not secret itself. */
        printf("%s: unresolved reference (%s)\n", name, value);
    else
        printf("%s: resolved (%zu bytes)\n", name, strlen(value));
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        for (int i = 1; i < argc; i++)
            show(argv[i]);
    } else {
        for (size_t i = 0; i < sizeof(default_names) / sizeof(default_names[0]); i++)
            show(default_names[i]);
    }
    return 0;
}
