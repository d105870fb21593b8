/* A stand-in for the TFLite C API functions tfq_codebook_decode_c_api.c calls, for testing that file on a
 * machine without the TFLite C library (TensorFlow's wheel exports none of them). It builds a small graph around
 * one TfqCodebookDecode node and drives that node through Init, Prepare, Invoke and Free the way the runtime
 * would, including the runtime's refusal to hand a kernel the execution plan outside the delegate context
 * (TfLiteOpaqueContextGetExecutionPlan / GetNodeAndRegistration fail until the subgraph's context is acquired
 * with TfLiteOpaqueContextAcquireSubgraphContext). Test-only; never linked into a real app.
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

typedef struct TfLiteIntArray {
  int size;
  int data[];
} TfLiteIntArray;

struct MockGraph;

struct TfLiteOpaqueTensor {
  int type;
  int32_t num_dims;
  int32_t dims[1];
  void* data;
  size_t bytes;
  int allocation_type;
  int is_variable;
  char name[16];
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
int32_t TfLiteOpaqueTensorDim(const TfLiteOpaqueTensor* tensor, int32_t i) { return tensor->dims[i]; }
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
