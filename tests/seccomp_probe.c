/* Calls the syscalls a seccomp filter decides on and prints "name result" per
 * line: 0 for success, else the errno.  Arguments are chosen so that, without
 * a filter, the kernel fails most calls with something other than EPERM
 * (EFAULT, EINVAL, ESRCH...) or lets them succeed: EPERM then means seccomp.
 * With the argument "unshare-mount" it only tries unshare(CLONE_NEWNS); with
 * "i386-getpid" (x86_64) only a getpid through the 32-bit ABI (int $0x80). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif

static void report(const char *name, long rc) {
    printf("%s %d\n", name, rc < 0 ? errno : 0);
}

/* In a child, so that a namespace made on success does not change the probe. */
static void in_child(const char *name, int flags) {
    int pipefd[2];
    if (pipe(pipefd) != 0) return;
    pid_t pid = fork();
    if (pid == 0) {
        int result = unshare(flags) < 0 ? errno : 0;
        (void)!write(pipefd[1], &result, sizeof result);
        _exit(0);
    }
    int result = -1;
    (void)!read(pipefd[0], &result, sizeof result);
    waitpid(pid, NULL, 0);
    printf("%s %d\n", name, result);
}

static void *thread_main(void *arg) { return arg; }

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "unshare-mount") == 0) {
        in_child("unshare_newns", CLONE_NEWNS);
        return 0;
    }
#if defined(__x86_64__)
    if (argc > 1 && strcmp(argv[1], "i386-getpid") == 0) {
        long rc;
        __asm__ volatile("int $0x80" : "=a"(rc) : "a"(20L /* i386 getpid */) : "memory");
        printf("i386_getpid %ld\n", rc > 0 ? 0 : -rc);
        return 0;
    }
#endif
    /* refused */
    report("keyctl", syscall(SYS_keyctl, 9999, 0, 0, 0, 0));
    report("add_key", syscall(SYS_add_key, NULL, NULL, NULL, 0, 0));
    report("request_key", syscall(SYS_request_key, NULL, NULL, NULL, 0));
    report("bpf", syscall(SYS_bpf, 9999, NULL, 0));
    report("perf_event_open", syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0));
    in_child("unshare_newuser", CLONE_NEWUSER);
    long child = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (child == 0) _exit(0);
    if (child > 0) waitpid(child, NULL, 0);
    report("clone_newuser", child);
    report("mount", syscall(SYS_mount, NULL, NULL, NULL, 0, NULL));
    report("umount2", syscall(SYS_umount2, NULL, 0));
    report("ptrace", syscall(SYS_ptrace, 3 /* PTRACE_PEEKUSER */, 0x7ffffff0, 0, 0));
    report("clock_settime", syscall(SYS_clock_settime, CLOCK_REALTIME, NULL));
    report("settimeofday", syscall(SYS_settimeofday, NULL, NULL));
    report("init_module", syscall(SYS_init_module, NULL, 0, NULL));
    report("finit_module", syscall(SYS_finit_module, -1, NULL, 0));
    report("userfaultfd", syscall(SYS_userfaultfd, -1));
    report("personality_other", syscall(SYS_personality, 0x0040000 /* ADDR_NO_RANDOMIZE */));
    report("socket_vsock", syscall(SYS_socket, AF_VSOCK, SOCK_STREAM, 0));
    report("clone3", syscall(SYS_clone3, NULL, 0));
    /* allowed */
    report("getpid", syscall(SYS_getpid));
    report("personality_query", syscall(SYS_personality, 0xffffffff));
    pid_t pid = fork();  /* glibc: clone without namespace flags */
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid(pid, NULL, 0);
    report("fork", pid);
    pthread_t thread;  /* glibc tries clone3 first, falls back to clone on ENOSYS */
    int err = pthread_create(&thread, NULL, thread_main, NULL);
    if (err == 0) pthread_join(thread, NULL);
    errno = err;
    report("pthread_create", err ? -1 : 0);
    report("socket_inet", syscall(SYS_socket, AF_INET, SOCK_STREAM, 0));
    struct timespec now;
    report("clock_gettime", clock_gettime(CLOCK_REALTIME, &now));
    return 0;
}
