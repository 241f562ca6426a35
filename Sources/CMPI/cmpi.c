#include "cmpi.h"
#include <sched.h>
#include <stdlib.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#include <stdio.h>
#include <string.h>
#include <time.h>

static _Thread_local char last_error[512];

const char *mi_last_error(void) { return last_error; }

#ifdef MESHINFER_HAVE_MPI
#include <mpi.h>

#define MAX_COMMS 64
static MPI_Comm comms[MAX_COMMS];
static int comm_count = 0;
static int initialized_here = 0;

/* Set when a collective timed out. Its request cannot be cancelled and still points at the
 * caller's buffers, which the caller frees: MPI must not progress again (it could write into
 * them). So every later call fails at once without entering MPI, and the caller stops the job
 * with mi_abort — after it has told its clients (serve answers 503 meanwhile). */
static int poisoned = 0;

int mi_compiled_with_mpi(void) { return 1; }

const char *mi_library_version(void) {
    static char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int length = 0;
    if (MPI_Get_library_version(version, &length) != MPI_SUCCESS) return "";
    return version;
}

static int fail(const char *what, int code) {
    char message[MPI_MAX_ERROR_STRING];
    int length = 0;
    if (MPI_Error_string(code, message, &length) != MPI_SUCCESS) snprintf(message, sizeof message, "code %d", code);
    snprintf(last_error, sizeof last_error, "%s: %s", what, message);
    return MI_ERROR;
}

int mi_init(int *rank, int *size) {
    int already = 0;
    MPI_Initialized(&already);
    if (!already) {
        int provided = 0;
        int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided);
        if (rc != MPI_SUCCESS) return fail("MPI_Init_thread", rc);
        if (provided < MPI_THREAD_SERIALIZED) {
            /* Overlapped collectives run on a background thread (one at a time). */
            snprintf(last_error, sizeof last_error,
                     "the MPI library provides thread level %d; MeshInfer needs MPI_THREAD_SERIALIZED or better", provided);
            return MI_ERROR;
        }
        /* Errors come back as codes, never as a silent process exit. */
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
        initialized_here = 1;
    }
    if (comm_count == 0) comms[comm_count++] = MPI_COMM_WORLD;
    MPI_Comm_rank(MPI_COMM_WORLD, rank);
    MPI_Comm_size(MPI_COMM_WORLD, size);
    return MI_OK;
}

int mi_is_initialized(void) {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    return init && !fin;
}

int mi_finalize(void) {
    if (!mi_is_initialized()) return MI_OK;
    if (poisoned) { MPI_Abort(MPI_COMM_WORLD, 1); return MI_ERROR; }   /* finalizing would wait for the stuck request */
    int rc = MPI_Finalize();
    return rc == MPI_SUCCESS ? MI_OK : fail("MPI_Finalize", rc);
}

void mi_abort(int code) {
    if (mi_is_initialized()) MPI_Abort(MPI_COMM_WORLD, code);
}

int mi_processor_name(char *out, int capacity) {
    char name[MPI_MAX_PROCESSOR_NAME];
    int length = 0;
    int rc = MPI_Get_processor_name(name, &length);
    if (rc != MPI_SUCCESS) return fail("MPI_Get_processor_name", rc);
    snprintf(out, (size_t)capacity, "%s", name);
    return MI_OK;
}

static int comm_of(int handle, MPI_Comm *comm) {
    if (poisoned) {
        snprintf(last_error, sizeof last_error, "a collective timed out earlier: the job is being stopped");
        return MI_ERROR;
    }
    if (handle < 0 || handle >= comm_count) {
        snprintf(last_error, sizeof last_error, "invalid communicator handle %d", handle);
        return MI_ERROR;
    }
    *comm = comms[handle];
    return MI_OK;
}

int mi_split(int color, int key, int *handle) {
    if (comm_count >= MAX_COMMS) {
        snprintf(last_error, sizeof last_error, "too many communicators (%d)", MAX_COMMS);
        return MI_ERROR;
    }
    MPI_Comm out;
    int rc = MPI_Comm_split(MPI_COMM_WORLD, color, key, &out);
    if (rc != MPI_SUCCESS) return fail("MPI_Comm_split", rc);
    MPI_Comm_set_errhandler(out, MPI_ERRORS_RETURN);
    comms[comm_count] = out;
    *handle = comm_count++;
    return MI_OK;
}

/* Polls a request until it completes; past the deadline it poisons MPI (above) and returns
 * MI_TIMEOUT. Spins for `spin_seconds` (a peer
 * that is about to arrive costs no sleep), then naps 10 µs between polls: a napping rank gives
 * its core to whatever else runs (other ranks when they outnumber the cores, or a busy host),
 * and the kernel wakes it promptly because sleepers keep their scheduling credit. (Yielding
 * instead can leave a rank off the CPU for a whole time slice.) The timer slack is lowered to
 * 1 µs so naps are as short as asked. */
static double spin_seconds = -1;

static int wait_for(MPI_Request *request, double timeout, const char *what) {
    if (spin_seconds < 0) {
        const char *env = getenv("MESHINFER_MPI_SPIN_US");
        spin_seconds = env ? atof(env) * 1e-6 : 20e-6;
#ifdef __linux__
        prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
#endif
    }
    double start = MPI_Wtime();
    long polls = 0;
    for (;;) {
        int done = 0;
        int rc = MPI_Test(request, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) return fail(what, rc);
        if (done) return MI_OK;
        if ((++polls & 15) != 0) continue;
        double waited = MPI_Wtime() - start;
        if (timeout > 0 && waited > timeout) {
            int rank = -1;
            MPI_Comm_rank(MPI_COMM_WORLD, &rank);
            snprintf(last_error, sizeof last_error, "%s: a peer did not arrive within %.0f s", what, timeout);
            fprintf(stderr, "meshinfer rank %d: %s; aborting the MPI job\n", rank, last_error);
            fflush(stderr);
            poisoned = 1;
            return MI_TIMEOUT;
        }
        if (waited > spin_seconds) {
            struct timespec nap = {0, 10000};  /* 10 µs */
            nanosleep(&nap, NULL);
        }
    }
}

static int too_large(long bytes) {
    if (bytes < 0 || bytes > 2147483647L) {
        snprintf(last_error, sizeof last_error, "message of %ld bytes is outside MPI's int count", bytes);
        return 1;
    }
    return 0;
}

int mi_allgather(int handle, const void *send, long bytes, void *recv, double timeout) {
    MPI_Comm comm;
    MPI_Request request;
    if (comm_of(handle, &comm) != MI_OK || too_large(bytes)) return MI_ERROR;
    int rc = MPI_Iallgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, comm, &request);
    if (rc != MPI_SUCCESS) return fail("MPI_Iallgather", rc);
    return wait_for(&request, timeout, "all-gather");
}

int mi_alltoall(int handle, const void *send, long bytes_per_member, void *recv, double timeout) {
    MPI_Comm comm;
    MPI_Request request;
    if (comm_of(handle, &comm) != MI_OK || too_large(bytes_per_member)) return MI_ERROR;
    int rc = MPI_Ialltoall(send, (int)bytes_per_member, MPI_BYTE, recv, (int)bytes_per_member, MPI_BYTE, comm, &request);
    if (rc != MPI_SUCCESS) return fail("MPI_Ialltoall", rc);
    return wait_for(&request, timeout, "all-to-all");
}

int mi_allgatherv(int handle, const void *send, long bytes, void *recv, const int *counts, const int *displs,
                  double timeout) {
    MPI_Comm comm;
    MPI_Request request;
    if (comm_of(handle, &comm) != MI_OK || too_large(bytes)) return MI_ERROR;
    int rc = MPI_Iallgatherv(send, (int)bytes, MPI_BYTE, recv, counts, displs, MPI_BYTE, comm, &request);
    if (rc != MPI_SUCCESS) return fail("MPI_Iallgatherv", rc);
    return wait_for(&request, timeout, "all-gather-v");
}

int mi_bcast(int handle, void *buffer, long bytes, int root, double timeout) {
    MPI_Comm comm;
    MPI_Request request;
    if (comm_of(handle, &comm) != MI_OK || too_large(bytes)) return MI_ERROR;
    int rc = MPI_Ibcast(buffer, (int)bytes, MPI_BYTE, root, comm, &request);
    if (rc != MPI_SUCCESS) return fail("MPI_Ibcast", rc);
    return wait_for(&request, timeout, "broadcast");
}

int mi_barrier(int handle, double timeout) {
    MPI_Comm comm;
    MPI_Request request;
    if (comm_of(handle, &comm) != MI_OK) return MI_ERROR;
    int rc = MPI_Ibarrier(comm, &request);
    if (rc != MPI_SUCCESS) return fail("MPI_Ibarrier", rc);
    return wait_for(&request, timeout, "barrier");
}

double mi_wtime(void) { return MPI_Wtime(); }

#else  /* no MPI in this build */

static int unavailable(void) {
    snprintf(last_error, sizeof last_error,
             "this build has no MPI: install Open MPI (apt-get install libopenmpi-dev openmpi-bin) and rebuild");
    return MI_UNAVAILABLE;
}

int mi_compiled_with_mpi(void) { return 0; }
const char *mi_library_version(void) { return ""; }
int mi_init(int *rank, int *size) { (void)rank; (void)size; return unavailable(); }
int mi_is_initialized(void) { return 0; }
int mi_finalize(void) { return MI_OK; }
void mi_abort(int code) { (void)code; }
int mi_processor_name(char *out, int capacity) { (void)out; (void)capacity; return unavailable(); }
int mi_split(int color, int key, int *handle) { (void)color; (void)key; (void)handle; return unavailable(); }
int mi_allgather(int h, const void *s, long b, void *r, double t) { (void)h; (void)s; (void)b; (void)r; (void)t; return unavailable(); }
int mi_alltoall(int h, const void *s, long b, void *r, double t) { (void)h; (void)s; (void)b; (void)r; (void)t; return unavailable(); }
int mi_allgatherv(int h, const void *s, long b, void *r, const int *c, const int *d, double t) {
    (void)h; (void)s; (void)b; (void)r; (void)c; (void)d; (void)t; return unavailable();
}
int mi_bcast(int h, void *buf, long b, int root, double t) { (void)h; (void)buf; (void)b; (void)root; (void)t; return unavailable(); }
int mi_barrier(int h, double t) { (void)h; (void)t; return unavailable(); }
double mi_wtime(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

#endif
