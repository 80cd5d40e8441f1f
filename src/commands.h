/* commands.h — the subcommands of `llmint8`, one file each (cmd_NAME.c). */
#ifndef LLMINT8_COMMANDS_H
#define LLMINT8_COMMANDS_H

int cmd_generate(int argc, char **argv);
int cmd_ppl(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_outliers(int argc, char **argv);
int cmd_serve(int argc, char **argv);

/* The model `generate` runs when none is named: the demo model shipped in models/. */
#define DEFAULT_MODEL_DIR "models/opt-gutenberg-7m"

#endif
