/* cmd_tokenize.c — `llmint8 tokenize`: the token ids of a text, as the model sees them. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"

static const char HELP[] =
    "Usage: llmint8 tokenize MODEL_DIR (-p TEXT | -f FILE) [--no-bos] [--show]\n"
    "Prints the token ids, space-separated (with the BOS the model expects, unless --no-bos).\n\n"
    "  -p, --prompt TEXT   the text\n"
    "  -f, --file FILE     read the text from FILE ('-' for stdin)\n"
    "      --no-bos        do not prepend the BOS token\n"
    "      --show          one token per line: id and the text it stands for\n"
    "      --tokenizer DIR tokenizer files from DIR instead of MODEL_DIR\n\n"
    "\n%s\nExample:\n"
    "  llmint8 tokenize models/opt-gutenberg-7m -p \"Hello world\"\n";

enum { ARG_NO_BOS = ARG_COMMAND_BASE, ARG_SHOW };

int cmd_tokenize(int argc, char **argv) {
    static const struct option longopts[] = {
        CLI_COMMON_OPTIONS,
        {"prompt", required_argument, NULL, 'p'},
        {"file", required_argument, NULL, 'f'},
        {"no-bos", no_argument, NULL, ARG_NO_BOS},
        {"show", no_argument, NULL, ARG_SHOW},
        {NULL, 0, NULL, 0},
    };
    CommonOptions co;
    cli_common_defaults(&co);
    const char *prompt = NULL, *file = NULL;
    bool bos = true, show = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "p:f:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': printf(HELP, CLI_COMMON_HELP); return 0;
        case 'p': prompt = optarg; break;
        case 'f': file = optarg; break;
        case ARG_NO_BOS: bos = false; break;
        case ARG_SHOW: show = true; break;
        default: {
            int r = cli_common_option(c, optarg, &co);
            if (r < 0) return 2;
            if (r == 0) return cli_usage_error("tokenize", "unknown option");
        }
        }
    }
    if (optind < argc) co.model_dir = argv[optind++];
    if (optind < argc) return cli_usage_error("tokenize", "unexpected argument '%s'", argv[optind]);
    if (!co.model_dir) return cli_usage_error("tokenize", "no MODEL_DIR given");
    if (!prompt == !file) return cli_usage_error("tokenize", "give exactly one of -p TEXT and -f FILE");

    Error err;
    Tokenizer *tok;
    if (tokenizer_load(co.tokenizer_dir ? co.tokenizer_dir : co.model_dir, &tok, &err)) return cli_fail(&err);
    char *text = NULL;
    size_t len;
    if (prompt) {
        len = strlen(prompt);
    } else if (cli_read_file(file, &text, &len, &err)) {
        tokenizer_free(tok);
        return cli_fail(&err);
    }
    int32_t *ids;
    size_t n;
    int rc = tokenizer_encode(tok, prompt ? prompt : text, len, bos, &ids, &n, &err);
    if (rc == 0) {
        for (size_t i = 0; i < n; i++) {
            if (show) {
                size_t blen;
                const uint8_t *b = tokenizer_token_bytes(tok, ids[i], &blen);
                printf("%6d  '", ids[i]);
                cli_write_escaped(stdout, (const char *)b, blen, '\''); /* bytes, not terminal controls */
                printf("'\n");
            } else {
                printf(i ? " %d" : "%d", ids[i]);
            }
        }
        if (!show) printf("\n");
        free(ids);
    }
    free(text);
    tokenizer_free(tok);
    return rc ? cli_fail(&err) : 0;
}
