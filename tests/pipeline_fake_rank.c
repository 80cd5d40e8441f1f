/* pipeline_fake_rank.c — a hostile rank 1 for tests/test_pipeline.py: it answers rank 0's
 * handshake (src/pipeline_mpi.c) with a message that is not what llmint8 sends, so that the
 * test can check rank 0's checks of what arrives.
 *   short   a handshake of 10 bytes (rank 0 must refuse the size and end the run)
 *   magic   a handshake of the right size, all zeros (a bad header: an error on both ranks)
 * Tags and the handshake's size are pipeline_mpi.c's: TAG_CMD 1, TAG_HELLO 5, TAG_VERDICT 6. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

enum { TAG_CMD = 1, TAG_HELLO = 5, TAG_VERDICT = 6, HELLO_BYTES = 4 * 4 + 2 * 8 + 400, VERDICT_BYTES = 2 * 4 + 1200 };

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    const char *mode = argc > 1 ? argv[1] : "short";
    int32_t header[16];
    MPI_Recv(header, sizeof header, MPI_BYTE, 0, TAG_CMD, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    static char hello[HELLO_BYTES], verdict[VERDICT_BYTES];
    memset(hello, 0, sizeof hello);
    MPI_Send(hello, strcmp(mode, "magic") == 0 ? HELLO_BYTES : 10, MPI_BYTE, 0, TAG_HELLO, MPI_COMM_WORLD);
    MPI_Recv(verdict, sizeof verdict, MPI_BYTE, 0, TAG_VERDICT, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    MPI_Finalize();
    return 0;
}
