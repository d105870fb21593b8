/* A stand-in for the TFLite C API functions tfq_codebook_decode_c_api.c and tfq_graph_ops_c_api.c call, for
 * testing those files on a machine without the TFLite C library (TensorFlow's wheel exports none of them). It
 * builds a small graph around one TfqCodebookDecode node and drives that node through Init, Prepare, Invoke and
 * Free the way the runtime would, including the runtime's refusal to hand a kernel the execution plan outside the
 * delegate context (TfLiteOpaqueContextGetExecutionPlan / GetNodeAndRegistration fail until the subgraph's context
 * is acquired with TfLiteOpaqueContextAcquireSubgraphContext); tfq_mock_c_api_run_graph_op does the same for one
 * graph-op node (TfqSegmentSum, ...), with quantization parameters, tensor resizing and dynamic outputs.
 * Test-only; never linked into a real app.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tfq_codebook_core.h"

typedef int TfLiteStatusValue;

#define MOCK_MAX_TENSORS 16
#define MOCK_MAX_NODES 16
#define MOCK_MAX_LIST 8
#define MOCK_MAX_SUBGRAPHS 4
#define MOCK_MAX_DIMS 8

typedef struct TfLiteIntArray {
  int size;
  int data[];
} TfLiteIntArray;

struct MockGraph;

struct TfLiteOpaqueTensor {
  int type;
  int32_t num_dims;
  int32_t dims[MOCK_MAX_DIMS];
  void* data;
  size_t bytes;
  int allocation_type;
  int is_variable;
  char name[16];
  int quant_type;     /* TfLiteQuantizationType: 0 none, 1 affine */
  float scale;        /* the legacy per-tensor parameters (0 unless one scale and one zero point) */
  int32_t zero_point;
  void* owned;        /* buffer of a dynamic tensor, allocated by TfLiteOpaqueContextResizeTensor */
  int bad_access;     /* set when a kernel asked for a dimension outside [0, num_dims) */
};

struct TfLiteOpaqueNode {
  int inputs[MOCK_MAX_LIST];
  int num_inputs;
  int outputs[MOCK_MAX_LIST];
  int num_outputs;
  void* user_data;
};

struct TfLiteOpaqueContext {
  struct MockGraph* graph;
  int delegate_mode; /* > 0 between an acquisition and its release */
};

typedef struct TfLiteOpaqueContext TfLiteOpaqueContext;
typedef struct TfLiteOpaqueNode TfLiteOpaqueNode;
typedef struct TfLiteOpaqueTensor TfLiteOpaqueTensor;

typedef struct TfLiteOperator {
  int builtin_code;
  const char* custom_name;
  int version;
  void* (*init)(TfLiteOpaqueContext*, const char*, size_t);
  void (*free_fn)(TfLiteOpaqueContext*, void*);
  TfLiteStatusValue (*prepare)(TfLiteOpaqueContext*, TfLiteOpaqueNode*);
  TfLiteStatusValue (*invoke)(TfLiteOpaqueContext*, TfLiteOpaqueNode*);
} TfLiteOperator;

typedef struct MockGraph {
  TfLiteOpaqueTensor tensors[MOCK_MAX_TENSORS];
  TfLiteOpaqueNode nodes[MOCK_MAX_NODES];
  int num_nodes;
  struct {
    int size;
    int data[MOCK_MAX_NODES];
  } plan;
  int graph_inputs[MOCK_MAX_LIST];
  int num_graph_inputs;
  TfLiteOpaqueContext contexts[MOCK_MAX_SUBGRAPHS]; /* one per subgraph; the decode node lives in one */
  int num_subgraphs;
  int plan_reads; /* successful GetExecutionPlan calls */
  int phase;      /* graph-op driver: 1 during Prepare, 2 during Invoke */
  int fail_resize; /* graph-op driver: TfLiteOpaqueContextResizeTensor fails */
  char error[TFQ_CODEBOOK_ERR_LEN * 2];
} MockGraph;

static TfLiteOperator g_other_op = {1, NULL, 1, NULL, NULL, NULL, NULL}; /* registration of the other nodes */

/* Appends to the errors reported so far, as TFLite's error reporter does until the caller reads them. */
void TfLiteOpaqueContextReportError(TfLiteOpaqueContext* context, const char* format, ...) {
  MockGraph* g = context->graph;
  size_t used = strlen(g->error);
  if (used + 1 >= sizeof(g->error)) return;
  va_list args;
  va_start(args, format);
  vsnprintf(g->error + used, sizeof(g->error) - used, format, args);
  va_end(args);
}

TfLiteOperator* TfLiteOperatorCreate(int builtin_code, const char* custom_name, int version) {
  TfLiteOperator* op = (TfLiteOperator*)calloc(1, sizeof(TfLiteOperator));
  if (op == NULL) return NULL;
  op->builtin_code = builtin_code;
  op->custom_name = custom_name;
  op->version = version;
  return op;
}

void TfLiteOperatorSetInit(TfLiteOperator* op, void* (*init)(TfLiteOpaqueContext*, const char*, size_t)) {
  op->init = init;
}
void TfLiteOperatorSetFree(TfLiteOperator* op, void (*free_fn)(TfLiteOpaqueContext*, void*)) {
  op->free_fn = free_fn;
}
void TfLiteOperatorSetPrepare(TfLiteOperator* op,
                              TfLiteStatusValue (*prepare)(TfLiteOpaqueContext*, TfLiteOpaqueNode*)) {
  op->prepare = prepare;
}
void TfLiteOperatorSetInvoke(TfLiteOperator* op,
                             TfLiteStatusValue (*invoke)(TfLiteOpaqueContext*, TfLiteOpaqueNode*)) {
  op->invoke = invoke;
}

int TfLiteOpaqueNodeNumberOfInputs(const TfLiteOpaqueNode* node) { return node->num_inputs; }
int TfLiteOpaqueNodeNumberOfOutputs(const TfLiteOpaqueNode* node) { return node->num_outputs; }
void* TfLiteOpaqueNodeGetUserData(const TfLiteOpaqueNode* node) { return node->user_data; }

TfLiteStatusValue TfLiteOpaqueNodeInputs(const TfLiteOpaqueNode* node, const int** inputs, int* num_inputs) {
  *inputs = node->inputs;
  *num_inputs = node->num_inputs;
  return 0;
}

TfLiteStatusValue TfLiteOpaqueNodeOutputs(const TfLiteOpaqueNode* node, const int** outputs, int* num_outputs) {
  *outputs = node->outputs;
  *num_outputs = node->num_outputs;
  return 0;
}

static TfLiteOpaqueTensor* TensorAt(const TfLiteOpaqueContext* context, int index) {
  return index >= 0 && index < MOCK_MAX_TENSORS ? &context->graph->tensors[index] : NULL;
}

const TfLiteOpaqueTensor* TfLiteOpaqueNodeGetInput(const TfLiteOpaqueContext* context,
                                                   const TfLiteOpaqueNode* node, int index) {
  return index >= 0 && index < node->num_inputs ? TensorAt(context, node->inputs[index]) : NULL;
}

TfLiteOpaqueTensor* TfLiteOpaqueNodeGetOutput(TfLiteOpaqueContext* context, const TfLiteOpaqueNode* node,
                                              int index) {
  return index >= 0 && index < node->num_outputs ? TensorAt(context, node->outputs[index]) : NULL;
}

int TfLiteOpaqueTensorType(const TfLiteOpaqueTensor* tensor) { return tensor->type; }
int32_t TfLiteOpaqueTensorNumDims(const TfLiteOpaqueTensor* tensor) { return tensor->num_dims; }
int32_t TfLiteOpaqueTensorDim(const TfLiteOpaqueTensor* tensor, int32_t i) {
  if (i < 0 || i >= tensor->num_dims || i >= MOCK_MAX_DIMS) { /* the runtime would read out of bounds */
    ((TfLiteOpaqueTensor*)tensor)->bad_access = 1;
    return 0;
  }
  return tensor->dims[i];
}
size_t TfLiteOpaqueTensorByteSize(const TfLiteOpaqueTensor* tensor) { return tensor->bytes; }
void* TfLiteOpaqueTensorData(const TfLiteOpaqueTensor* tensor) { return tensor->data; }
int TfLiteOpaqueTensorGetAllocationType(const TfLiteOpaqueTensor* tensor) { return tensor->allocation_type; }
int TfLiteOpaqueTensorIsVariable(const TfLiteOpaqueTensor* tensor) { return tensor->is_variable; }
const char* TfLiteOpaqueTensorName(const TfLiteOpaqueTensor* tensor) { return tensor->name; }

TfLiteStatusValue TfLiteOpaqueContextGetInputs(const TfLiteOpaqueContext* context, const int** inputs,
                                               int* num_inputs) {
  *inputs = context->graph->graph_inputs;
  *num_inputs = context->graph->num_graph_inputs;
  return 0;
}

TfLiteStatusValue TfLiteOpaqueContextAcquireSubgraphContext(TfLiteOpaqueContext* context, int subgraph_index,
                                                            TfLiteOpaqueContext** acquired_context) {
  MockGraph* g = context->graph;
  if (subgraph_index < 0 || subgraph_index >= g->num_subgraphs) {
    TfLiteOpaqueContextReportError(context, "subgraph_index < subgraphs_->size() was not true.");
    return 1;
  }
  g->contexts[subgraph_index].delegate_mode++;
  *acquired_context = &g->contexts[subgraph_index];
  return 0;
}

TfLiteStatusValue TfLiteOpaqueContextReleaseSubgraphContext(TfLiteOpaqueContext* context, int subgraph_index) {
  MockGraph* g = context->graph;
  if (subgraph_index < 0 || subgraph_index >= g->num_subgraphs || g->contexts[subgraph_index].delegate_mode < 1) {
    TfLiteOpaqueContextReportError(context, "mock: release of subgraph %d that was not acquired", subgraph_index);
    return 1;
  }
  g->contexts[subgraph_index].delegate_mode--;
  return 0;
}

TfLiteStatusValue TfLiteOpaqueContextGetExecutionPlan(TfLiteOpaqueContext* context,
                                                      TfLiteIntArray** execution_plan) {
  if (context->delegate_mode < 1) {
    TfLiteOpaqueContextReportError(context, "The function is forbidden if not calling in delegate.");
    return 1;
  }
  context->graph->plan_reads++;
  *execution_plan = (TfLiteIntArray*)&context->graph->plan;
  return 0;
}

TfLiteStatusValue TfLiteOpaqueContextGetNodeAndRegistration(TfLiteOpaqueContext* context, int node_index,
                                                            TfLiteOpaqueNode** node,
                                                            TfLiteOperator** registration) {
  MockGraph* g = context->graph;
  if (context->delegate_mode < 1) {
    TfLiteOpaqueContextReportError(context, "The function is forbidden if not calling in delegate.");
    return 1;
  }
  if (node_index < 0 || node_index >= g->num_nodes) return 1;
  *node = &g->nodes[node_index];
  *registration = &g_other_op;
  return 0;
}

extern TfLiteOperator* TfqCodebookDecodeOperator(void);

static void SetTensor(TfLiteOpaqueTensor* t, int type, void* data, size_t bytes, int allocation_type,
                      const char* name) {
  t->type = type;
  t->num_dims = 1;
  t->dims[0] = (int32_t)bytes;
  t->data = data;
  t->bytes = bytes;
  t->allocation_type = allocation_type;
  t->is_variable = 0;
  snprintf(t->name, sizeof(t->name), "%s", name);
}

/* Runs one TfqCodebookDecode node inside a mock graph.
 *
 * Tensors: 0 packed indices (uint8, read-only), 1 codebook (int8, read-only), 2 the decode output (`out`, with
 * `out_allocation_type` and `out_is_variable`), 3..15 further int8 arena tensors of one byte.
 * `graph` lists the nodes in execution order, node k being the k-th new node: the value -1 is a decode node
 * (inputs 0 and 1, output 2; the first one is the node run here), -2 puts the first decode node in the plan once
 * more, any other entry is `n_in, inputs..., n_out, outputs...`. The decode node is in
 * subgraph `self_subgraph` of `num_subgraphs`; `graph_inputs` are that subgraph's inputs.
 *
 * Returns 0 on success, 1 when Prepare or Invoke failed (the reported errors are copied to `err`), -1 when
 * the operator is incomplete, the description is invalid, or the kernel broke the runtime's contract (left a
 * subgraph in the delegate context, wrote the output although Prepare failed). */
TFQ_EXPORT int tfq_mock_c_api_run_graph(const uint8_t* options, size_t options_len, const uint8_t* packed,
                                        size_t packed_len, const int8_t* codebook, size_t codebook_len, int8_t* out,
                                        size_t out_len, int out_allocation_type, int out_is_variable,
                                        const int* graph, int graph_len, const int* graph_inputs,
                                        int num_graph_inputs, int num_subgraphs, int self_subgraph, char* err,
                                        size_t err_len) {
  TfLiteOperator* op = TfqCodebookDecodeOperator();
  if (op == NULL || op->builtin_code != 32 || op->custom_name == NULL ||
      strcmp(op->custom_name, TFQ_CODEBOOK_OP_NAME) != 0 || op->init == NULL || op->prepare == NULL ||
      op->invoke == NULL || op->free_fn == NULL) {
    snprintf(err, err_len, "TfqCodebookDecodeOperator() returned an incomplete operator");
    return -1;
  }
  if (num_subgraphs < 1 || num_subgraphs > MOCK_MAX_SUBGRAPHS || self_subgraph < 0 ||
      self_subgraph >= num_subgraphs || num_graph_inputs < 0 || num_graph_inputs > MOCK_MAX_LIST) {
    snprintf(err, err_len, "mock: bad subgraph or input description");
    return -1;
  }
  MockGraph* g = (MockGraph*)calloc(1, sizeof(MockGraph));
  if (g == NULL) return -1;
  static int8_t scratch[MOCK_MAX_TENSORS];
  SetTensor(&g->tensors[0], 3, (void*)packed, packed_len, 1, "indices");
  SetTensor(&g->tensors[1], 9, (void*)codebook, codebook_len, 1, "codebook");
  SetTensor(&g->tensors[2], 9, out, out_len, out_allocation_type, "weight");
  g->tensors[2].is_variable = out_is_variable;
  for (int t = 3; t < MOCK_MAX_TENSORS; ++t) SetTensor(&g->tensors[t], 9, &scratch[t], 1, 2, "activation");
  for (int s = 0; s < num_subgraphs; ++s) g->contexts[s].graph = g;
  g->num_subgraphs = num_subgraphs;
  memcpy(g->graph_inputs, graph_inputs, sizeof(int) * (size_t)num_graph_inputs);
  g->num_graph_inputs = num_graph_inputs;
  int self = -1, ok = 1;
  for (int i = 0; ok && i < graph_len;) {
    if (g->num_nodes >= MOCK_MAX_NODES || g->plan.size >= MOCK_MAX_NODES) ok = 0;
    if (!ok) break;
    if (graph[i] == -2) {
      if (self < 0) ok = 0;
      else g->plan.data[g->plan.size++] = self;
      i += 1;
      continue;
    }
    TfLiteOpaqueNode* node = &g->nodes[g->num_nodes];
    if (graph[i] == -1) {
      node->inputs[0] = 0;
      node->inputs[1] = 1;
      node->num_inputs = 2;
      node->outputs[0] = 2;
      node->num_outputs = 1;
      if (self < 0) self = g->num_nodes;
      i += 1;
    } else {
      int n_in = graph[i];
      if (n_in < 0 || n_in > MOCK_MAX_LIST || i + 1 + n_in >= graph_len) {
        ok = 0;
        break;
      }
      memcpy(node->inputs, graph + i + 1, sizeof(int) * (size_t)n_in);
      node->num_inputs = n_in;
      int n_out = graph[i + 1 + n_in];
      if (n_out < 0 || n_out > MOCK_MAX_LIST || i + 2 + n_in + n_out > graph_len) {
        ok = 0;
        break;
      }
      memcpy(node->outputs, graph + i + 2 + n_in, sizeof(int) * (size_t)n_out);
      node->num_outputs = n_out;
      i += 2 + n_in + n_out;
    }
    g->plan.data[g->plan.size++] = g->num_nodes++;
  }
  if (!ok || self < 0) {
    free(g);
    snprintf(err, err_len, "mock: bad graph description");
    return -1;
  }
  TfLiteOpaqueContext* context = &g->contexts[self_subgraph];
  TfLiteOpaqueNode* node = &g->nodes[self];
  /* Every decode node in the plan shares the user data of the first: one Init, as for one node. */
  void* user_data = op->init(context, (const char*)options, options_len);
  for (int n = 0; n < g->num_nodes; ++n) g->nodes[n].user_data = user_data;
  int8_t* before = (int8_t*)malloc(out_len ? out_len : 1);
  if (before != NULL && out_len) memcpy(before, out, out_len);
  int status = op->prepare(context, node);
  int contract = 1;
  for (int s = 0; s < num_subgraphs; ++s) contract &= g->contexts[s].delegate_mode == 0;
  if (status != 0 && before != NULL && out_len && memcmp(before, out, out_len) != 0) contract = 0;
  if (status == 0) status = op->invoke(context, node);
  op->free_fn(context, user_data);
  free(before);
  if (!contract) {
    snprintf(err, err_len, "mock: the kernel left a subgraph in the delegate context or wrote its output in a "
             "failed Prepare: %s", g->error);
    free(g);
    return -1;
  }
  snprintf(err, err_len, "%s", g->error);
  int plan_reads = g->plan_reads;
  free(g);
  if (status == 0 && plan_reads == 0) {
    snprintf(err, err_len, "mock: Prepare succeeded without reading the execution plan");
    return -1;
  }
  return status == 0 ? 0 : 1;
}

/* The decode node followed by one reader of its output, the output an arena tensor, one subgraph whose input is
 * tensor 3. Returns as tfq_mock_c_api_run_graph. */
TFQ_EXPORT int tfq_mock_c_api_run(const uint8_t* options, size_t options_len, const uint8_t* packed,
                                  size_t packed_len, const int8_t* codebook, size_t codebook_len, int8_t* out,
                                  size_t out_len, char* err, size_t err_len) {
  static const int kGraph[] = {-1, 2, 3, 2, 1, 4};
  static const int kInputs[] = {3};
  return tfq_mock_c_api_run_graph(options, options_len, packed, packed_len, codebook, codebook_len, out, out_len,
                                  2, 0, kGraph, (int)(sizeof(kGraph) / sizeof(kGraph[0])), kInputs, 1, 1, 0, err,
                                  err_len);
}

/* --- graph ops (tfq_graph_ops_c_api.c) ------------------------------------------------------------------ */

typedef struct TfLiteQuantizationParams {
  float scale;
  int32_t zero_point;
} TfLiteQuantizationParams;
typedef struct TfLiteQuantization {
  int type;
  void* params;
} TfLiteQuantization;

static long g_int_arrays_live; /* TfLiteIntArrayCreate minus TfLiteIntArrayFree, to catch leaks */

TfLiteIntArray* TfLiteIntArrayCreate(int size) {
  if (size < 0 || (size_t)size > (SIZE_MAX - sizeof(TfLiteIntArray)) / sizeof(int)) return NULL;
  TfLiteIntArray* a = (TfLiteIntArray*)malloc(sizeof(TfLiteIntArray) + sizeof(int) * (size_t)size);
  if (a == NULL) return NULL;
  a->size = size;
  ++g_int_arrays_live;
  return a;
}

void TfLiteIntArrayFree(TfLiteIntArray* a) {
  if (a == NULL) return;
  --g_int_arrays_live;
  free(a);
}

void TfLiteOperatorDelete(TfLiteOperator* op) { free(op); }

/* The mock keeps no affine parameter struct: `params` is NULL (tfq_graph_ops_c_api.c reads only `type`). */
TfLiteQuantization TfLiteOpaqueTensorGetQuantization(const TfLiteOpaqueTensor* tensor) {
  TfLiteQuantization q = {tensor->quant_type, NULL};
  return q;
}

TfLiteQuantizationParams TfLiteOpaqueTensorGetQuantizationParams(const TfLiteOpaqueTensor* tensor) {
  TfLiteQuantizationParams p = {tensor->scale, tensor->zero_point};
  return p;
}

/* As tflite::SetTensorToDynamic: frees the data of a tensor that was not dynamic yet. */
void TfLiteOpaqueTensorSetAllocationTypeToDynamic(TfLiteOpaqueTensor* tensor) {
  if (tensor->allocation_type != TFQ_ALLOC_DYNAMIC) {
    tensor->allocation_type = TFQ_ALLOC_DYNAMIC;
    tensor->data = NULL;
  }
}

static size_t TypeSize(int type) { return type == 1 || type == 2 ? 4 : 1; }

/* As Subgraph::ResizeTensor: takes ownership of `new_size` in every case; sets the shape and byte size; a dynamic
 * tensor gets a fresh buffer (filled with 0x5A, so that an element the kernel does not write shows), an arena
 * tensor's memory comes with the allocation after Prepare. Refuses what the runtime refuses: a tensor of model or
 * caller memory, and (in the mock) an arena tensor resized during Invoke. */
TfLiteStatusValue TfLiteOpaqueContextResizeTensor(TfLiteOpaqueContext* context, TfLiteOpaqueTensor* tensor,
                                                  TfLiteIntArray* new_size) {
  MockGraph* g = context->graph;
  const char* problem = NULL;
  int64_t elements = 1;
  if (g->fail_resize) problem = "mock: ResizeTensor fails (as asked)";
  else if (tensor == NULL || new_size == NULL) problem = "mock: ResizeTensor without a tensor or a shape";
  else if (new_size->size > MOCK_MAX_DIMS) problem = "mock: ResizeTensor to more dimensions than the mock holds";
  else if (tensor->allocation_type != TFQ_ALLOC_ARENA_RW && tensor->allocation_type != TFQ_ALLOC_ARENA_RW_PERSISTENT &&
           tensor->allocation_type != TFQ_ALLOC_DYNAMIC) {
    problem = "mock: ResizeTensor of a tensor the runtime does not let an op resize";
  } else if (g->phase == 2 && tensor->allocation_type != TFQ_ALLOC_DYNAMIC) {
    problem = "mock: ResizeTensor of a non-dynamic tensor during Invoke";
  }
  for (int i = 0; problem == NULL && i < new_size->size; ++i) {
    if (new_size->data[i] < 0) problem = "mock: ResizeTensor to a negative extent";
    elements *= new_size->data[i];
    if (elements > INT32_MAX) problem = "mock: ResizeTensor to more than 2**31 - 1 elements";
  }
  if (problem != NULL) {
    TfLiteOpaqueContextReportError(context, "%s; ", problem);
    TfLiteIntArrayFree(new_size);
    return 1;
  }
  tensor->num_dims = new_size->size;
  for (int i = 0; i < new_size->size; ++i) tensor->dims[i] = new_size->data[i];
  tensor->bytes = (size_t)elements * TypeSize(tensor->type);
  TfLiteIntArrayFree(new_size);
  if (tensor->allocation_type == TFQ_ALLOC_DYNAMIC) {
    free(tensor->owned);
    tensor->owned = malloc(tensor->bytes ? tensor->bytes : 1);
    if (tensor->owned == NULL) {
      tensor->data = NULL;
      TfLiteOpaqueContextReportError(context, "mock: out of memory; ");
      return 1;
    }
    memset(tensor->owned, 0x5A, tensor->bytes);
    tensor->data = tensor->owned;
  } else {
    tensor->data = NULL; /* until the allocation that follows Prepare */
  }
  return 0;
}

extern TfLiteOperator* TfqGraphOpOperator(const char* name);

/* Faults tfq_mock_c_api_run_graph_op can put into the node (0: none). */
enum {
  MOCK_FAULT_NONE = 0,
  MOCK_FAULT_FIVE_INPUTS = 1,        /* one input more than the op takes (an int32 scalar) */
  MOCK_FAULT_IDS_FLOAT = 2,          /* segment ids typed float32 */
  MOCK_FAULT_DATA_UINT8 = 3,         /* data typed uint8 */
  MOCK_FAULT_OUTPUT_NO_QUANT = 4,    /* output without quantization */
  MOCK_FAULT_OUTPUT_PER_CHANNEL = 5, /* affine output with several scales: the runtime's legacy params read 0 */
  MOCK_FAULT_OPTIONS = 6,            /* custom options present */
  MOCK_FAULT_OUTPUT_IS_INPUT = 7,    /* the node's output is its data input */
  MOCK_FAULT_OUTPUT_MMAP = 8,        /* output of model memory (kTfLiteMmapRo) */
  MOCK_FAULT_BAD_INPUT_INDEX = 9,    /* segment ids at a tensor index the graph does not have */
  MOCK_FAULT_TOO_FEW_INPUTS = 10,    /* the last required input dropped */
  MOCK_FAULT_DATA_BYTES = 11,        /* data's byte size one more than its shape */
  MOCK_FAULT_OUTPUT_VARIABLE = 12,   /* output is a variable tensor */
  MOCK_FAULT_NO_PREPARE = 13,        /* Invoke without Prepare */
  MOCK_FAULT_NUM_SEGMENTS_2 = 14,    /* num_segments of two elements */
  MOCK_FAULT_IDS_2D = 15,            /* segment ids of shape [E, 1] */
  MOCK_FAULT_GATHER_LONGER = 16,     /* gather of shape [E + 1] */
  MOCK_FAULT_OUTPUT_MISSING = 17,    /* output at a tensor index the graph does not have */
  MOCK_FAULT_DATA_RANK0 = 18,        /* data of shape [] */
  MOCK_FAULT_NEGATIVE_DIM = 19,      /* data of shape [rows, -inner] */
  MOCK_FAULT_RESIZE_FAILS = 20,      /* TfLiteOpaqueContextResizeTensor fails */
  MOCK_FAULT_HUGE_SHAPE = 21,        /* data of shape [0, 65536, 65536, 65536] */
  MOCK_VARIANT_RANK3 = 30,           /* valid: data of shape [rows, 1, inner] */
  MOCK_VARIANT_OPTIONAL_SLOT = 31,   /* valid without gather: the gather slot present with index -1 */
  MOCK_VARIANT_OUTPUT_SIZED = 32,    /* valid: the output already has its final shape (no resize needed) */
};

enum { T_DATA = 0, T_IDS = 1, T_NUM = 2, T_GATHER = 3, T_OUT = 4, T_EXTRA = 5, T_ABSENT = 99 };

static void SetGraphTensor(TfLiteOpaqueTensor* t, int type, int allocation_type, const char* name, int rank,
                           const int64_t* dims) {
  t->type = type;
  t->num_dims = rank;
  int64_t elements = 1;
  for (int i = 0; i < rank; ++i) {
    t->dims[i] = (int32_t)dims[i];
    elements *= dims[i] < 0 ? 0 : dims[i];
  }
  t->bytes = (size_t)elements * TypeSize(type);
  t->data = NULL;
  t->allocation_type = allocation_type;
  snprintf(t->name, sizeof(t->name), "%s", name);
}

/* Runs one graph-op node (`name`) in a mock graph: Init, Prepare, the allocation of the arena tensors, Invoke
 * (twice: the second must give the same output), Free.
 *
 * Tensors: 0 data (int8 [rows, inner], scale in_scale, zero point in_zero), 1 segment ids (int32 [edges]),
 * 2 num_segments (int32 scalar; a model constant (kTfLiteMmapRo) when num_segments_constant is 1, kTfLitePersistentRo
 * when 5, otherwise an arena tensor whose value is known only after Prepare), 3 gather (int32 [edges], when `gather`
 * is not NULL), 4 the output (int8, arena, scale out_scale, zero point out_zero, shape [1] until the op resizes it),
 * 5 an extra int32 scalar. Inputs and data pointers of arena tensors are NULL during Prepare, as before the
 * runtime's arena allocation. `fault` is one of the MOCK_FAULT_* / MOCK_VARIANT_* values above.
 *
 * On success copies the output into `out` (out_capacity bytes) and its row count into `*out_rows`. Returns 0 on
 * success, 1 when Prepare or Invoke failed (the reported errors are in `err`), 2 when TfqGraphOpOperator(name)
 * returned NULL, -1 when the operator is incomplete, the description is invalid, or the kernel broke the runtime's
 * contract (an output shape other than [num_segments, data dims...], output written by a failed Invoke, a
 * dimension read past a tensor's rank, a leaked shape array, outputs differing between two Invokes). */
TFQ_EXPORT int tfq_mock_c_api_run_graph_op(const char* name, const int8_t* data, int64_t rows, int64_t inner,
                                           const int32_t* ids, int64_t edges, const int32_t* gather,
                                           int32_t num_segments, int num_segments_constant, double in_scale,
                                           int32_t in_zero, double out_scale, int32_t out_zero, int8_t* out,
                                           int64_t out_capacity, int64_t* out_rows, int fault, char* err,
                                           size_t err_len) {
  if (err_len > 0) err[0] = '\0';
  if (out_rows != NULL) *out_rows = -1;
  TfLiteOperator* op = TfqGraphOpOperator(name);
  if (op == NULL) {
    snprintf(err, err_len, "TfqGraphOpOperator returned NULL");
    return 2;
  }
  if (op != TfqGraphOpOperator(name) || op->builtin_code != 32 || op->version != 1 || op->custom_name == NULL ||
      strcmp(op->custom_name, name) != 0 || op->init == NULL || op->prepare == NULL || op->invoke == NULL ||
      op->free_fn == NULL) {
    snprintf(err, err_len, "TfqGraphOpOperator(\"%s\") returned an incomplete or changing operator", name);
    return -1;
  }
  if (rows < 0 || inner < 1 || edges < 0 || rows > INT32_MAX || inner > INT32_MAX || edges > INT32_MAX ||
      out_capacity < 0 || (fault == MOCK_FAULT_IDS_2D && edges < 1)) {
    snprintf(err, err_len, "mock: bad sizes");
    return -1;
  }
  const int degree_norm = strcmp(name, "TfqDegreeNorm") == 0;
  MockGraph* g = (MockGraph*)calloc(1, sizeof(MockGraph));
  if (g == NULL) return -1;
  g->contexts[0].graph = g;
  g->num_subgraphs = 1;
  TfLiteOpaqueContext* context = &g->contexts[0];
  TfLiteOpaqueTensor* T = g->tensors;
  int32_t num_value = num_segments, extra_value = 0;
  const int64_t data_dims[4] = {rows, inner, 0, 0}, rank3[3] = {rows, 1, inner}, negative[2] = {rows, -inner},
                huge[4] = {0, 65536, 65536, 65536}, ids_dims[2] = {edges, 1}, gather_dims[1] = {edges + 1},
                vector2[1] = {2}, one[1] = {1}, out_sized[2] = {degree_norm ? rows : num_segments, inner};
  if (fault == MOCK_VARIANT_RANK3) SetGraphTensor(&T[T_DATA], 9, 2, "data", 3, rank3);
  else if (fault == MOCK_FAULT_NEGATIVE_DIM) SetGraphTensor(&T[T_DATA], 9, 2, "data", 2, negative);
  else if (fault == MOCK_FAULT_HUGE_SHAPE) SetGraphTensor(&T[T_DATA], 9, 2, "data", 4, huge);
  else SetGraphTensor(&T[T_DATA], fault == MOCK_FAULT_DATA_UINT8 ? 3 : 9, 2, "data",
                      fault == MOCK_FAULT_DATA_RANK0 ? 0 : 2, data_dims);
  if (fault == MOCK_FAULT_NEGATIVE_DIM || fault == MOCK_FAULT_HUGE_SHAPE) T[T_DATA].bytes = 0;
  if (fault == MOCK_FAULT_DATA_BYTES) T[T_DATA].bytes += 1;
  T[T_DATA].quant_type = 1;
  T[T_DATA].scale = (float)in_scale;
  T[T_DATA].zero_point = in_zero;
  SetGraphTensor(&T[T_IDS], fault == MOCK_FAULT_IDS_FLOAT ? 1 : 2, 2, "ids", fault == MOCK_FAULT_IDS_2D ? 2 : 1,
                 ids_dims);
  SetGraphTensor(&T[T_NUM], 2, num_segments_constant == 5 ? 5 : (num_segments_constant ? 1 : 2), "num_segments",
                 fault == MOCK_FAULT_NUM_SEGMENTS_2 ? 1 : 0, vector2);
  if (T[T_NUM].allocation_type != 2) T[T_NUM].data = &num_value; /* known before Prepare */
  SetGraphTensor(&T[T_GATHER], 2, 2, "gather", 1, fault == MOCK_FAULT_GATHER_LONGER ? gather_dims : ids_dims);
  if (fault == MOCK_VARIANT_OUTPUT_SIZED) SetGraphTensor(&T[T_OUT], 9, 2, "output", 2, out_sized);
  else SetGraphTensor(&T[T_OUT], 9, fault == MOCK_FAULT_OUTPUT_MMAP ? 1 : 2, "output", 1, one);
  T[T_OUT].is_variable = fault == MOCK_FAULT_OUTPUT_VARIABLE;
  T[T_OUT].quant_type = fault == MOCK_FAULT_OUTPUT_NO_QUANT ? 0 : 1;
  T[T_OUT].scale = fault == MOCK_FAULT_OUTPUT_PER_CHANNEL ? 0.0f : (float)out_scale;
  T[T_OUT].zero_point = fault == MOCK_FAULT_OUTPUT_PER_CHANNEL ? 0 : out_zero;
  if (T[T_OUT].allocation_type == 1) T[T_OUT].data = out; /* model memory: present from the start */
  SetGraphTensor(&T[T_EXTRA], 2, 1, "extra", 0, one);
  T[T_EXTRA].data = &extra_value;
  g->fail_resize = fault == MOCK_FAULT_RESIZE_FAILS;

  TfLiteOpaqueNode* node = &g->nodes[0];
  g->num_nodes = 1;
  int n = 0;
  node->inputs[n++] = T_DATA;
  node->inputs[n++] = fault == MOCK_FAULT_BAD_INPUT_INDEX ? T_ABSENT : T_IDS;
  if (!degree_norm) node->inputs[n++] = T_NUM;
  if (!degree_norm && gather != NULL) node->inputs[n++] = T_GATHER;
  else if (!degree_norm && fault == MOCK_VARIANT_OPTIONAL_SLOT) node->inputs[n++] = -1;
  if (fault == MOCK_FAULT_FIVE_INPUTS) {
    while (n < (degree_norm ? 2 : 4)) node->inputs[n++] = -1;
    node->inputs[n++] = T_EXTRA;
  }
  if (fault == MOCK_FAULT_TOO_FEW_INPUTS) --n;
  node->num_inputs = n;
  node->outputs[0] = fault == MOCK_FAULT_OUTPUT_IS_INPUT ? T_DATA
                     : (fault == MOCK_FAULT_OUTPUT_MISSING ? T_ABSENT : T_OUT);
  node->num_outputs = 1;

  const long arrays_before = g_int_arrays_live;
  static const char kOptions[4] = {1, 2, 3, 4};
  node->user_data = op->init(context, fault == MOCK_FAULT_OPTIONS ? kOptions : NULL,
                             fault == MOCK_FAULT_OPTIONS ? sizeof(kOptions) : 0);
  const char* broken = NULL;
  int status = 0;
  if (fault != MOCK_FAULT_NO_PREPARE) {
    g->phase = 1;
    status = op->prepare(context, node);
  }
  /* The allocation that follows Prepare: arena tensors get their memory, runtime inputs their values. */
  T[T_DATA].data = (void*)data;
  T[T_IDS].data = (void*)ids;
  T[T_GATHER].data = (void*)gather;
  T[T_NUM].data = &num_value;
  if (T[T_OUT].allocation_type == 2) {
    if ((int64_t)T[T_OUT].bytes > out_capacity) {
      if (status == 0) broken = "mock: the output's arena size exceeds the test buffer";
    } else {
      T[T_OUT].data = out;
    }
  }
  int8_t* before = (int8_t*)malloc(out_capacity > 0 ? (size_t)out_capacity : 1);
  int8_t* first = NULL;
  if (before == NULL) broken = "mock: out of memory";
  else if (out_capacity > 0) memcpy(before, out, (size_t)out_capacity);
  for (int round = 0; broken == NULL && status == 0 && round < 2; ++round) {
    g->phase = 2;
    status = op->invoke(context, node);
    const int dynamic = T[T_OUT].allocation_type == TFQ_ALLOC_DYNAMIC;
    if (status != 0) {
      int written = 0;
      if (dynamic && T[T_OUT].owned != NULL) {
        for (size_t i = 0; i < T[T_OUT].bytes; ++i) written |= ((uint8_t*)T[T_OUT].owned)[i] != 0x5A;
      } else if (round == 0 && out_capacity > 0) {
        written = memcmp(before, out, (size_t)out_capacity) != 0;
      }
      if (written) broken = "mock: a failed Invoke wrote the output";
      break;
    }
    const TfLiteOpaqueTensor* o = &T[T_OUT];
    const TfLiteOpaqueTensor* d = &T[T_DATA];
    int shape_ok = o->num_dims == d->num_dims && o->num_dims >= 1 &&
                   o->dims[0] == (degree_norm ? d->dims[0] : num_segments);
    for (int i = 1; shape_ok && i < o->num_dims; ++i) shape_ok = o->dims[i] == d->dims[i];
    if (!shape_ok || o->bytes != (size_t)o->dims[0] * (size_t)inner) {
      broken = "mock: the output does not have the shape [num_segments, data dims after the first]";
      break;
    }
    if ((int64_t)o->bytes > out_capacity) {
      broken = "mock: the output exceeds the test buffer";
      break;
    }
    if (dynamic && o->bytes > 0) memcpy(out, o->data, o->bytes);
    if (round == 0) {
      first = (int8_t*)malloc(o->bytes ? o->bytes : 1);
      if (first == NULL) broken = "mock: out of memory";
      else memcpy(first, out, o->bytes);
    } else if (first != NULL && memcmp(first, out, o->bytes) != 0) {
      broken = "mock: a second Invoke gave a different output";
    }
    if (out_rows != NULL) *out_rows = o->dims[0];
  }
  op->free_fn(context, node->user_data);
  for (int t = 0; t < MOCK_MAX_TENSORS; ++t) {
    if (broken == NULL && g->tensors[t].bad_access) broken = "mock: the kernel read a dimension past a tensor's rank";
    free(g->tensors[t].owned);
  }
  if (broken == NULL && g_int_arrays_live != arrays_before) broken = "mock: a TfLiteIntArray was leaked";
  free(before);
  free(first);
  if (broken != NULL) {
    snprintf(err, err_len, "%s: %s", broken, g->error);
    free(g);
    return -1;
  }
  snprintf(err, err_len, "%s", g->error);
  free(g);
  if (status != 0 && out_rows != NULL) *out_rows = -1;
  return status == 0 ? 0 : 1;
}
