/* A narrow C face over oneDNN's matmul, so the Rust side never lays out oneDNN's
 * structs itself: prepared f32 or bf16 weights, and products `dst += src * weights`
 * for a given number of rows (`src` in the weights' format, `dst` f32), the sum fused
 * into the matmul as a post-op. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <oneapi/dnnl/dnnl.h>

extern void omp_set_num_threads(int);

/* The row count the weights' layout is chosen for; any row count reuses it. */
#define REFERENCE_ROWS 1024

struct crossenc_weights {
    dnnl_memory_desc_t md;
    dnnl_data_type_t type; /* of the weights and of every product's `src` */
    dnnl_memory_t memory;
    int64_t inputs, outputs;
};

struct crossenc_product {
    dnnl_primitive_desc_t pd;
    dnnl_primitive_t primitive;
    dnnl_memory_desc_t src_md, dst_md, bias_md;
    int bias;
};

/* The activation a product may end with (`activation` below), as oneDNN names it. */
static const dnnl_alg_kind_t activations[] = {
    dnnl_alg_kind_undef, dnnl_eltwise_gelu_erf, dnnl_eltwise_gelu_tanh, dnnl_eltwise_relu};

static dnnl_engine_t engine;
static dnnl_status_t engine_status = dnnl_runtime_error;
static pthread_once_t engine_once = PTHREAD_ONCE_INIT;

static void create_engine(void) {
    /* oneDNN 2.6 may keep AMX behind its ISA limit; lift it unless the operator set one. */
    if (!getenv("ONEDNN_MAX_CPU_ISA") && !getenv("DNNL_MAX_CPU_ISA"))
        (void)dnnl_set_max_cpu_isa(dnnl_cpu_isa_avx512_core_amx);
    engine_status = dnnl_engine_create(&engine, dnnl_cpu, 0);
}

static dnnl_status_t ready(void) {
    pthread_once(&engine_once, create_engine);
    return engine_status;
}

#define TRY(call) do { dnnl_status_t s_ = (call); if (s_ != dnnl_success) { status = s_; goto done; } } while (0)

/* dst[rows, outputs] (f32) += src[rows, inputs] (`type`) * weights, weights in `weights_md`;
 * with `bias`, dst = src * weights + bias[outputs] instead, the bias added in the kernel.
 * Then `activation` (an index into `activations`, 0: none) on the result. */
static dnnl_status_t product_desc(dnnl_primitive_desc_t *pd, const dnnl_memory_desc_t *weights_md,
                                  dnnl_data_type_t type, int64_t rows, int64_t inputs, int64_t outputs,
                                  int bias, int activation, dnnl_memory_desc_t *src_md,
                                  dnnl_memory_desc_t *dst_md, dnnl_memory_desc_t *bias_md) {
    dnnl_status_t status = dnnl_success;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t post_ops = NULL;
    dnnl_matmul_desc_t desc;
    dnnl_dims_t src_dims = {rows, inputs}, dst_dims = {rows, outputs}, bias_dims = {1, outputs};
    if (activation < 0 || activation >= (int)(sizeof activations / sizeof *activations))
        return dnnl_invalid_arguments;
    TRY(dnnl_memory_desc_init_by_tag(src_md, 2, src_dims, type, dnnl_ab));
    TRY(dnnl_memory_desc_init_by_tag(dst_md, 2, dst_dims, dnnl_f32, dnnl_ab));
    TRY(dnnl_memory_desc_init_by_tag(bias_md, 2, bias_dims, dnnl_f32, dnnl_ab));
    TRY(dnnl_matmul_desc_init(&desc, src_md, weights_md, bias ? bias_md : NULL, dst_md));
    TRY(dnnl_post_ops_create(&post_ops));
    if (!bias) TRY(dnnl_post_ops_append_sum(post_ops, 1.0f));
    if (activation) TRY(dnnl_post_ops_append_eltwise(post_ops, 1.0f, activations[activation], 0.0f, 0.0f));
    TRY(dnnl_primitive_attr_create(&attr));
    TRY(dnnl_primitive_attr_set_post_ops(attr, post_ops));
    TRY(dnnl_primitive_desc_create(pd, &desc, attr, engine, NULL));
done:
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (post_ops) dnnl_post_ops_destroy(post_ops);
    return status;
}

static dnnl_status_t run(dnnl_primitive_t primitive, int nargs, dnnl_exec_arg_t *args) {
    dnnl_stream_t stream = NULL;
    dnnl_status_t status = dnnl_success;
    TRY(dnnl_stream_create(&stream, engine, dnnl_stream_default_flags));
    TRY(dnnl_primitive_execute(primitive, stream, nargs, args));
    TRY(dnnl_stream_wait(stream));
done:
    if (stream) dnnl_stream_destroy(stream);
    return status;
}

/* Copies row-major weights [inputs, outputs], bf16 where `bf16` is set and f32
 * otherwise, into the layout the matmul reads. */
int crossenc_weights_new(int64_t inputs, int64_t outputs, int bf16, const void *weights,
                         struct crossenc_weights **out) {
    dnnl_status_t status = ready();
    if (status != dnnl_success) return status;
    struct crossenc_weights *w = calloc(1, sizeof *w);
    if (!w) return dnnl_out_of_memory;
    w->inputs = inputs;
    w->outputs = outputs;
    w->type = bf16 ? dnnl_bf16 : dnnl_f32;
    dnnl_primitive_desc_t pd = NULL, reorder_pd = NULL;
    dnnl_primitive_t reorder = NULL;
    dnnl_memory_t user = NULL;
    dnnl_memory_desc_t user_md, any_md, src_md, dst_md, bias_md;
    dnnl_dims_t dims = {inputs, outputs};
    TRY(dnnl_memory_desc_init_by_tag(&user_md, 2, dims, w->type, dnnl_ab));
    TRY(dnnl_memory_desc_init_by_tag(&any_md, 2, dims, w->type, dnnl_format_tag_any));
    TRY(product_desc(&pd, &any_md, w->type, REFERENCE_ROWS, inputs, outputs, 0, 0, &src_md, &dst_md,
                     &bias_md));
    const dnnl_memory_desc_t *chosen = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    if (!chosen) { status = dnnl_runtime_error; goto done; }
    w->md = *chosen;
    TRY(dnnl_memory_create(&w->memory, &w->md, engine, DNNL_MEMORY_ALLOCATE));
    TRY(dnnl_memory_create(&user, &user_md, engine, (void *)weights));
    TRY(dnnl_reorder_primitive_desc_create(&reorder_pd, &user_md, engine, &w->md, engine, NULL));
    TRY(dnnl_primitive_create(&reorder, reorder_pd));
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, user}, {DNNL_ARG_TO, w->memory}};
    TRY(run(reorder, 2, args));
done:
    if (reorder) dnnl_primitive_destroy(reorder);
    if (reorder_pd) dnnl_primitive_desc_destroy(reorder_pd);
    if (user) dnnl_memory_destroy(user);
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (status != dnnl_success) {
        if (w->memory) dnnl_memory_destroy(w->memory);
        free(w);
    } else {
        *out = w;
    }
    return status;
}

void crossenc_weights_free(struct crossenc_weights *w) {
    if (!w) return;
    dnnl_memory_destroy(w->memory);
    free(w);
}

int crossenc_product_new(const struct crossenc_weights *w, int64_t rows, int bias, int activation,
                         struct crossenc_product **out) {
    struct crossenc_product *p = calloc(1, sizeof *p);
    if (!p) return dnnl_out_of_memory;
    dnnl_status_t status = dnnl_success;
    p->bias = bias;
    TRY(product_desc(&p->pd, &w->md, w->type, rows, w->inputs, w->outputs, bias, activation,
                     &p->src_md, &p->dst_md, &p->bias_md));
    TRY(dnnl_primitive_create(&p->primitive, p->pd));
done:
    if (status != dnnl_success) {
        if (p->pd) dnnl_primitive_desc_destroy(p->pd);
        free(p);
    } else {
        *out = p;
    }
    return status;
}

void crossenc_product_free(struct crossenc_product *p) {
    if (!p) return;
    dnnl_primitive_destroy(p->primitive);
    dnnl_primitive_desc_destroy(p->pd);
    free(p);
}

/* The highest instruction set oneDNN dispatches to here (`dnnl_cpu_isa_t`): it knows
 * whether the CPU has AMX and the kernel lets this process use it. */
int crossenc_onednn_isa(void) {
    if (ready() != dnnl_success) return 0;
    return (int)dnnl_get_effective_cpu_isa();
}

/* The implementation oneDNN chose, e.g. "brg:avx512_core_amx": valid while `p` lives. */
const char *crossenc_product_implementation(const struct crossenc_product *p) {
    const char *name = NULL;
    if (dnnl_primitive_desc_query(p->pd, dnnl_query_impl_info_str, 0, &name) != dnnl_success)
        return "unknown";
    return name;
}

/* The product `p` was made for, on `threads` OpenMP threads; `src` in the weights' format,
 * `bias` (`outputs` values) where it was made with one. */
int crossenc_product_run(const struct crossenc_product *p, const struct crossenc_weights *w,
                         const void *src, const float *bias, float *dst, int threads) {
    dnnl_status_t status = dnnl_success;
    dnnl_memory_t src_memory = NULL, dst_memory = NULL, bias_memory = NULL;
    if (p->bias && !bias) return dnnl_invalid_arguments;
    /* One product serves all weights of its shape: they must share the layout it was made for. */
    const dnnl_memory_desc_t *expected = dnnl_primitive_desc_query_md(p->pd, dnnl_query_weights_md, 0);
    if (!expected || !dnnl_memory_desc_equal(expected, &w->md)) return dnnl_invalid_arguments;
    omp_set_num_threads(threads);
    TRY(dnnl_memory_create(&src_memory, &p->src_md, engine, (void *)src));
    TRY(dnnl_memory_create(&dst_memory, &p->dst_md, engine, dst));
    dnnl_exec_arg_t args[4] = {
        {DNNL_ARG_SRC, src_memory}, {DNNL_ARG_WEIGHTS, w->memory}, {DNNL_ARG_DST, dst_memory},
        {DNNL_ARG_BIAS, NULL}};
    if (p->bias) {
        TRY(dnnl_memory_create(&bias_memory, &p->bias_md, engine, (void *)bias));
        args[3].memory = bias_memory;
    }
    TRY(run(p->primitive, p->bias ? 4 : 3, args));
done:
    if (bias_memory) dnnl_memory_destroy(bias_memory);
    if (src_memory) dnnl_memory_destroy(src_memory);
    if (dst_memory) dnnl_memory_destroy(dst_memory);
    return status;
}
