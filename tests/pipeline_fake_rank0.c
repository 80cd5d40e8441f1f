/* pipeline_fake_rank0.c — a hostile rank 0 for tests/test_pipeline_serve.py: it loads rank 1's
 * stage as llmint8's rank 0 would (src/pipeline_mpi.c: LOAD, then a verdict that accepts
 * whatever the handshake says) and then sends the engine's commands wrongly, so that the test
 * can check a worker's checks of what arrives:
 *   remove  SEQ_REMOVE of a sequence rank 1 does not have
 *   slot    SEQ_ADD claiming slot 5 where rank 1's first free slot is 1
 *   pos     a STEP that runs a live sequence from position 7 (rank 1 has it at 0)
 *   size    a STEP whose table of sequences is 4 bytes long
 * Each must end the run with a message from rank 1 (MPI_Abort), never a hang or a crash.
 * Tags, ops and sizes are pipeline_mpi.c's (protocol 2). */
#include <mpi.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { TAG_CMD = 1, TAG_HELLO = 5, TAG_VERDICT = 6, TAG_STEP = 7 };
enum { OP_LOAD = 1, OP_SEQ_ADD = 5, OP_SEQ_REMOVE = 6, OP_STEP = 7 };
enum { HELLO_BYTES = 4 * 4 + 2 * 8 + 400, MAGIC = 0x4c4d3870, PROTOCOL = 2 };

static void cmd(int32_t op, int32_t a, int32_t b, int32_t c) {
    int32_t h[16] = {MAGIC, op, a, b, c};
    MPI_Send(h, sizeof h, MPI_BYTE, 1, TAG_CMD, MPI_COMM_WORLD);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    const char *mode = argc > 1 ? argv[1] : "remove";
    const int layers = argc > 2 ? (int)strtol(argv[2], NULL, 10) : 6;
    /* LOAD: int8 with decomposition, threshold 6, per-token outliers, ctx 64, cache 128, batch 16,
     * float32 cache, rank 1 holds the second half of the layers */
    float tau = 6.0f;
    int32_t h[16] = {MAGIC, OP_LOAD, PROTOCOL, 1, 0, 1, 64, 128, 16, 0, layers / 2, layers};
    memcpy(&h[4], &tau, sizeof tau);
    MPI_Send(h, sizeof h, MPI_BYTE, 1, TAG_CMD, MPI_COMM_WORLD);
    static char hello[HELLO_BYTES];
    MPI_Recv(hello, sizeof hello, MPI_BYTE, 1, TAG_HELLO, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    struct { int32_t magic, ok; char msg[1200]; } verdict = {MAGIC, 1, ""};
    MPI_Send(&verdict, sizeof verdict, MPI_BYTE, 1, TAG_VERDICT, MPI_COMM_WORLD);
    if (strcmp(mode, "remove") == 0) {
        cmd(OP_SEQ_REMOVE, 3, 0, 0);
    } else if (strcmp(mode, "slot") == 0) {
        cmd(OP_SEQ_ADD, 10, 5, 0);
    } else {
        cmd(OP_SEQ_ADD, 10, 1, 0);
        cmd(OP_STEP, 1, 2, 0);
        int32_t table[3] = {1, 2, strcmp(mode, "pos") == 0 ? 7 : 0};
        MPI_Send(table, strcmp(mode, "size") == 0 ? 4 : (int)sizeof table, MPI_BYTE, 1, TAG_STEP, MPI_COMM_WORLD);
    }
    /* rank 1 must abort the job now; this rank waits for a command that never comes */
    int32_t never[16];
    MPI_Recv(never, sizeof never, MPI_BYTE, 1, TAG_CMD, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    MPI_Finalize();
    return 1;
}
