/* main.c — `llmint8 COMMAND ...`: finds the command and hands it the arguments, and checks
 * when the program ends that everything it printed reached standard output. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "cli.h"
#include "commands.h"

#ifndef LLMINT8_VERSION
#define LLMINT8_VERSION "0.1.0"
#endif

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} COMMANDS[] = {
    {"generate", cmd_generate, "continue a prompt, streaming the text"},
    {"ppl", cmd_ppl, "perplexity of a text (also: the paper's quantization ablation)"},
    {"convert", cmd_convert, "write an int8 (bitsandbytes layout) copy of a 16-bit checkpoint"},
    {"tokenize", cmd_tokenize, "print the token ids of a text"},
    {"info", cmd_info, "architecture, parameters, dtype and memory of a checkpoint"},
    {"bench", cmd_bench, "measure speed: int8 vs fp16 on synthetic weights"},
    {"outliers", cmd_outliers, "find the emergent outlier features of a model (paper section 4)"},
    {"serve", cmd_serve, "an OpenAI-compatible completions server (HTTP, continuous batching)"},
};
#define N_COMMANDS (sizeof COMMANDS / sizeof COMMANDS[0])

/* `llmint8 --version`: the version, the backends compiled in, and the CPU backend's own
 * description of the kernels it selected on this machine. */
static int print_version(void) {
    Error err = {{0}};
    Backend *cpu = cpu_backend_create(0, &err);
    if (!cpu) return cli_fail(&err);
    printf("llmint8 %s\nbackends: %s\n%s\n", LLMINT8_VERSION, backend_compiled_list(), cpu->describe(cpu));
    cpu->destroy(cpu);
    return 0;   /* a failed write is reported by cli_close_stdout at exit */
}

static void usage(FILE *out) {
    fprintf(out,
            "llmint8 %s: OPT and BLOOM language models with LLM.int8() (8-bit weights, 16-bit outliers)\n\n"
            "Usage: llmint8 COMMAND [MODEL_DIR] [OPTIONS]\n\nCommands:\n",
            LLMINT8_VERSION);
    for (size_t i = 0; i < N_COMMANDS; i++) fprintf(out, "  %-10s %s\n", COMMANDS[i].name, COMMANDS[i].summary);
    fprintf(out,
            "\nExamples:\n"
            "  llmint8 generate models/opt-gutenberg-7m -p \"It was a dark and stormy night\" -n 64\n"
            "  llmint8 ppl models/opt-gutenberg-7m -f wiki.test.raw --ctx 256\n"
            "  llmint8 convert facebook-opt-1.3b -o opt-1.3b-int8\n\n"
            "'llmint8 COMMAND --help' describes a command. 'llmint8 --version' lists the backends.\n");
}

int main(int argc, char **argv) {
    /* stdio forgets why a write failed (only the error flag stays), so output is buffered
     * in blocks larger than any help text or report: the write that fails is then the flush
     * at exit (or a command's own cli_flush_stdout), which knows errno. */
    static char stdout_buffer[1 << 16];
    if (!isatty(STDOUT_FILENO)) setvbuf(stdout, stdout_buffer, _IOFBF, sizeof stdout_buffer);
    atexit(cli_close_stdout); /* every command's output is checked once it is done */
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) return print_version();
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(cmd, COMMANDS[i].name) == 0) return COMMANDS[i].run(argc - 1, argv + 1);
    fputs("llmint8: '", stderr);
    cli_write_escaped(stderr, cmd, strlen(cmd), 0);
    fputs("' is not a command.\n\n", stderr);
    usage(stderr);
    return 2;
}
