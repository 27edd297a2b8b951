/* A process whose main thread calls pthread_exit() while three workers keep running, each holding 32 MiB
 * it has written to. Prints "ready" once the main thread is about to exit. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static pthread_barrier_t touched;
/* Kept reachable so the compiler cannot drop the allocation or the writes. */
char *volatile held[3];

static void *worker(void *arg) {
    long i = (long)arg;
    size_t size = (size_t)32 << 20;
    char *p = malloc(size);
    if (p == NULL) {
        abort();
    }
    memset(p, 1, size);
    held[i] = p;
    pthread_barrier_wait(&touched);
    for (;;) {
        pause();
    }
    return NULL;
}

int main(void) {
    pthread_t t[3];
    pthread_barrier_init(&touched, NULL, 4);
    for (int i = 0; i < 3; i++) {
        pthread_create(&t[i], NULL, worker, (void *)(long)i);
    }
    pthread_barrier_wait(&touched);
    printf("ready\n");
    fflush(stdout);
    pthread_exit(NULL);
}
