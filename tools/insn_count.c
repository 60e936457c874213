/* A qemu TCG plugin (qemu-user 7.2, plugin API version 1) that counts how often every translated block
 * of guest code runs, for qcompile's dynamic instruction counts (qcompile/backends/tvm/arm_instructions.py).
 *
 *   qemu-aarch64 -plugin insn_count.so,out=FILE ...
 *
 * At exit FILE gets one line per block that ran: "<guest start address> <instructions> <executions>"
 * (hex, decimal, decimal). A block is a straight run of instructions, so the host side knows every
 * instruction it holds from the binary itself (objdump) and can classify them there (sdot, smlal, ...):
 * the plugin stays a plain counter. Counting is an inline add per block execution (no callback), which
 * keeps the emulation about as fast as without the plugin. The adds are not atomic: exact while one
 * thread runs the guest code of interest (the one-shot run sets TVM_NUM_THREADS=1).
 *
 * Debian ships no qemu-plugin.h, so the few declarations used are written here from the documented API
 * (https://www.qemu.org/docs/master/devel/tcg-plugins.html); the symbols resolve against the qemu binary.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* --- the part of the qemu 7.2 plugin API this plugin uses --- */
typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
#define EXPORT __attribute__((visibility("default")))
EXPORT int qemu_plugin_version = 1; /* what qemu 7.2 accepts (QEMU_PLUGIN_VERSION there) */

/* --- the counter --- */
/* One record per translation: a block can be translated again (same start, maybe another length), so the
 * host side adds records up by (start, length). Records are never freed: qemu's generated code keeps
 * pointers to their counters until exit. */
struct block {
    uint64_t start, executions;
    size_t insns;
    struct block *next;
};

static struct block *blocks;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char *out_path;
static pid_t owner; /* a forked guest child inherits the counters: only the first process writes them */

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    struct block *b = calloc(1, sizeof *b);
    if (b == NULL) {
        abort();
    }
    b->start = qemu_plugin_tb_vaddr(tb);
    b->insns = qemu_plugin_tb_n_insns(tb);
    pthread_mutex_lock(&lock);
    b->next = blocks;
    blocks = b;
    pthread_mutex_unlock(&lock);
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->executions, 1);
}

static void write_counts(qemu_plugin_id_t id, void *userdata)
{
    if (getpid() != owner) {
        return;
    }
    FILE *f = fopen(out_path, "w");
    if (f == NULL) {
        perror(out_path);
        return;
    }
    for (struct block *b = blocks; b != NULL; b = b->next) {
        if (b->executions) {
            fprintf(f, "%" PRIx64 " %zu %" PRIu64 "\n", b->start, b->insns, b->executions);
        }
    }
    fclose(f);
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const void *info, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            out_path = strdup(argv[i] + 4);
        }
    }
    if (out_path == NULL) {
        fprintf(stderr, "insn_count: give the output file as -plugin insn_count.so,out=FILE\n");
        return -1;
    }
    owner = getpid();
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, write_counts, NULL);
    return 0;
}
