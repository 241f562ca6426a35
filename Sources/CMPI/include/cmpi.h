#ifndef MESHINFER_CMPI_H
#define MESHINFER_CMPI_H

/* A tiny shim over MPI for Swift: Open MPI's handles (MPI_COMM_WORLD, MPI_BYTE, ...) are
 * macros over global symbols, which Swift cannot import, so the shim exposes plain C
 * functions with communicators as small integer handles (0 = MPI_COMM_WORLD).
 *
 * Built against mpi.h when the manifest found one (MESHINFER_HAVE_MPI); otherwise every
 * function reports MI_UNAVAILABLE, so machines without MPI still build and run everything
 * else.
 *
 * Waits are non-blocking requests polled until done, napping while they poll so that
 * oversubscribed ranks make progress. After `timeout` seconds (timeout <= 0: never) the shim
 * prints which wait timed out and aborts the whole job (MPI_Abort): a pending request cannot be
 * cancelled and still points at the caller's buffers. Return codes: */
enum {
    MI_OK = 0,
    MI_TIMEOUT = 1,      /* a peer did not arrive in time: MPI is unusable from now on; stop the job (mi_abort) */
    MI_ERROR = 2,        /* MPI reported an error (message in mi_last_error) */
    MI_UNAVAILABLE = 3,  /* this build has no MPI */
};

/* 1 when built with MPI. */
int mi_compiled_with_mpi(void);
/* Library version string (e.g. "Open MPI v4.1.4 ..."), or "" without MPI. */
const char *mi_library_version(void);
/* Last error message of a failed call (thread-local). */
const char *mi_last_error(void);

/* MPI_Init_thread (requests MPI_THREAD_MULTIPLE); world rank and size. Safe to call twice. */
int mi_init(int *rank, int *size);
/* 1 after mi_init succeeded and before mi_finalize. */
int mi_is_initialized(void);
int mi_finalize(void);
/* MPI_Abort on MPI_COMM_WORLD: the launcher kills every rank. */
void mi_abort(int code);
/* Processor (host) name of this rank. */
int mi_processor_name(char *out, int capacity);

/* MPI_Comm_split of the world; *handle receives a new communicator handle. */
int mi_split(int color, int key, int *handle);

/* Collectives on raw bytes. */
int mi_allgather(int handle, const void *send, long bytes, void *recv, double timeout);
int mi_alltoall(int handle, const void *send, long bytes_per_member, void *recv, double timeout);
int mi_allgatherv(int handle, const void *send, long bytes, void *recv, const int *counts, const int *displs,
                  double timeout);
int mi_bcast(int handle, void *buffer, long bytes, int root, double timeout);
int mi_barrier(int handle, double timeout);
/* Wall-clock seconds (MPI_Wtime). */
double mi_wtime(void);

#endif
