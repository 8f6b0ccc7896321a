/*
 * edge_lr: logistic regression trained on an Arduino Uno (ATmega328P) over a serial line.
 *
 * The host (distlab edge) streams samples in framed, checksummed batches; the board computes
 * sigmoid predictions and gradients as the bytes arrive (nothing is stored but the current
 * sample) and updates its weights once a batch's checksum is verified. The protocol is in
 * docs/edge-protocol.md; the host's bit-exact float32 replica is src/distlab/edge/reference.py.
 * Opens unchanged in the Arduino IDE; `make -C firmware` builds it without the IDE.
 */
#include <avr/sleep.h>
#include <string.h>

#ifndef EDGE_BAUD
#define EDGE_BAUD 115200
#endif
#define FW_NAME "edge_lr"
#ifndef FW_VERSION  // the protocol version; the host refuses any other
#define FW_VERSION 1
#endif
#define MAX_FEATURES 32
#define LED_PIN 13
#define TOKEN_MAX 12
#define MAX_BATCH 60000

// Reasons a line is refused (the word after NAK or ERR).
#define BAD_NONE 0
#define BAD_TOKEN 1
#define BAD_FEATURES 2
#define BAD_VECTOR 3
#define BAD_COUNT 4

// The model: nfeat weights and a bias. SETW sets both; TRAIN must name the same nfeat.
static float w[MAX_FEATURES];
static float b;
static uint8_t nfeat;
// One batch's gradient, applied only once the whole line's CRC checks.
static float g[MAX_FEATURES];
static float gb;
// A sample (features, then its label), a PRED input or SETW's weights and bias.
static float stage[MAX_FEATURES + 1];

static uint8_t board_id;
static bool training;
static float lr;
static uint32_t n_samples, batch_size, per_epoch, total_batches, next_seq;
static uint32_t train_samples, samples_seen, batches_applied, naks;
static bool led_on;

// The line being read: its CRC so far, its tokens, the numbers among them.
static uint16_t crc, crc_rx;
static bool in_crc;
static uint8_t crc_digits;
static char cmd;
static uint16_t tok_index;  // a batch line has 3 + count words
static uint8_t tok_len, bad;
static char tok[TOKEN_MAX + 1];
static uint16_t vec_len;
static uint32_t hex_bits;
static uint32_t args[5];
static uint32_t got;
static uint16_t out_crc;

const char HEX_DIGITS[] = "0123456789abcdef";

// CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF): the check value of "123456789" is 0x29B1.
uint16_t crc16_step(uint16_t c, uint8_t byte) {
  c ^= (uint16_t)byte << 8;
  for (uint8_t i = 0; i < 8; i++) c = (c & 0x8000) ? (uint16_t)((c << 1) ^ 0x1021) : (uint16_t)(c << 1);
  return c;
}

int8_t hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// exp(-a) for a in [0, 16] from + * / only, so numpy float32 can replay it op by op (avr-libc's
// expf is not correctly rounded): Taylor degree 6 in Horner form on t = -a/64, squared 6 times.
float exp_neg(float a) {
  float t = a * -0.015625f;
  float e = 1.0f;
  for (uint8_t k = 6; k >= 1; k--) e = 1.0f + (t * e) / (float)k;
  for (uint8_t i = 0; i < 6; i++) e = e * e;
  return e;
}

float sigmoid(float z) {
  float a = z < 0.0f ? -z : z;
  if (a > 16.0f) a = 16.0f;
  float e = exp_neg(a);
  float s = 1.0f / (1.0f + e);
  return z < 0.0f ? e * s : s;
}

// z = b + w0 x0 + w1 x1 + ..., added left to right (the reference adds in the same order).
float logit(const float *x) {
  float z = b;
  for (uint8_t j = 0; j < nfeat; j++) z = z + w[j] * x[j];
  return z;
}

void learn_sample() {
  float err = sigmoid(logit(stage)) - stage[nfeat];
  for (uint8_t j = 0; j < nfeat; j++) g[j] = g[j] + err * stage[j];
  gb = gb + err;
}

void apply_batch(uint32_t count) {
  float step = lr / (float)count;
  for (uint8_t j = 0; j < nfeat; j++) w[j] = w[j] - step * g[j];
  b = b - step * gb;
}

void set_led(bool on) {
  led_on = on;
  digitalWrite(LED_PIN, on ? HIGH : LOW);
}

// ---- framed output: PAYLOAD*CRC4\n ----

void out_char(char c) {
  out_crc = crc16_step(out_crc, (uint8_t)c);
  Serial.write(c);
}

void out_str(const char *s) {
  while (*s) out_char(*s++);
}

void out_begin(const char *s) {
  out_crc = 0xFFFF;
  out_str(s);
}

void out_u32(uint32_t v) {
  char buf[11];
  ultoa(v, buf, 10);
  out_char(' ');
  out_str(buf);
}

void out_hex(uint32_t v) {
  for (int8_t s = 28; s >= 0; s -= 4) out_char(HEX_DIGITS[(v >> s) & 15]);
}

void out_float(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  out_hex(u);
}

void out_end() {
  uint16_t c = out_crc;
  Serial.write('*');
  for (int8_t s = 12; s >= 0; s -= 4) Serial.write(HEX_DIGITS[(c >> s) & 15]);
  Serial.write('\n');
}

const char *reason_word(uint8_t why) {
  switch (why) {
    case BAD_TOKEN: return " token";
    case BAD_FEATURES: return " features";
    case BAD_VECTOR: return " vector";
    case BAD_COUNT: return " count";
  }
  return " frame";
}

void reply_nak(const char *why) {
  naks++;
  out_begin("NAK");
  out_u32(next_seq);
  out_str(why);
  out_end();
}

void reply_err(const char *why) {
  out_begin("ERR");
  out_str(why);
  out_end();
}

// ---- reading a line, one character at a time ----

void reset_line() {
  crc = 0xFFFF;
  crc_rx = 0;
  in_crc = false;
  crc_digits = 0;
  cmd = 0;
  tok_index = 0;
  tok_len = 0;
  bad = BAD_NONE;
  vec_len = 0;
  hex_bits = 0;
  got = 0;
}

// Which token holds a hex vector: a batch's samples, SETW's weights, PRED's input.
bool vector_token() {
  if (cmd == 'B') return tok_index >= 3;
  if (cmd == 'S') return tok_index == 2;
  if (cmd == 'R') return tok_index == 1;
  return false;
}

uint8_t vector_features() {
  return cmd == 'S' ? (uint8_t)args[0] : nfeat;
}

// Hex floats go straight into stage[]; a batch sample ends with its label, '0' or '1'.
void vector_char(char c) {
  uint16_t hex_len = 8 * (uint16_t)vector_features() + (cmd == 'S' ? 8 : 0);
  if (vec_len < hex_len) {
    int8_t v = hex_value(c);
    if (v < 0) bad = BAD_VECTOR;
    hex_bits = (hex_bits << 4) | (uint8_t)(v & 15);
    if ((vec_len & 7) == 7) stage[vec_len >> 3] = bits_to_float(hex_bits);
  } else if (cmd == 'B' && vec_len == hex_len && (c == '0' || c == '1')) {
    stage[nfeat] = c == '1' ? 1.0f : 0.0f;
  } else {
    bad = BAD_VECTOR;
    return;
  }
  vec_len++;
}

bool parse_u32(uint32_t *out) {
  if (tok_len == 0 || tok_len > 9) return false;  // up to 999999999
  uint32_t v = 0;
  for (uint8_t i = 0; i < tok_len; i++) {
    if (tok[i] < '0' || tok[i] > '9') return false;
    v = v * 10 + (uint32_t)(tok[i] - '0');
  }
  *out = v;
  return true;
}

bool parse_hex32(uint32_t *out) {
  if (tok_len != 8) return false;
  uint32_t v = 0;
  for (uint8_t i = 0; i < 8; i++) {
    int8_t h = hex_value(tok[i]);
    if (h < 0) return false;
    v = (v << 4) | (uint8_t)h;
  }
  *out = v;
  return true;
}

char command_letter() {
  tok[tok_len] = 0;
  if (strcmp(tok, "HELLO") == 0) return 'H';
  if (strcmp(tok, "PING") == 0) return 'P';
  if (strcmp(tok, "TRAIN") == 0) return 'T';
  if (strcmp(tok, "B") == 0) return 'B';
  if (strcmp(tok, "DONE") == 0) return 'D';
  if (strcmp(tok, "GETW") == 0) return 'G';
  if (strcmp(tok, "SETW") == 0) return 'S';
  if (strcmp(tok, "PRED") == 0) return 'R';
  if (strcmp(tok, "STAT") == 0) return 'A';
  return '?';
}

// A batch sample is learned from as soon as it is complete; its gradient waits in g[].
void end_vector() {
  uint16_t want = 8 * (uint16_t)vector_features() + (cmd == 'S' ? 8 : 0) + (cmd == 'B' ? 1 : 0);
  if (vec_len != want) {
    bad = BAD_VECTOR;
  } else if (cmd == 'B') {
    if (!training || got >= args[1]) bad = BAD_COUNT;
    else learn_sample();
    got++;
  }
}

void end_number() {
  uint16_t i = tok_index - 1;
  bool hex = cmd == 'T' && tok_index == 2;  // TRAIN's learning rate: float32 bits
  if (i >= 5 || !(hex ? parse_hex32(&args[i]) : parse_u32(&args[i]))) {
    bad = BAD_TOKEN;
    return;
  }
  if (cmd == 'S' && tok_index == 1 && (args[0] < 1 || args[0] > MAX_FEATURES)) bad = BAD_FEATURES;
}

void end_token() {
  if (bad) return;
  if (tok_index == 0) {
    cmd = command_letter();
    if (cmd == 'B') {
      for (uint8_t j = 0; j < MAX_FEATURES; j++) g[j] = 0.0f;
      gb = 0.0f;
    }
  } else if (vector_token()) {
    end_vector();
  } else {
    end_number();
  }
  tok_index++;
  tok_len = 0;
  vec_len = 0;
}

void token_char(char c) {
  if (bad) return;
  if (vector_token()) {
    vector_char(c);
  } else if (tok_len < TOKEN_MAX) {
    tok[tok_len++] = c;
  } else {
    bad = BAD_TOKEN;
  }
}

// ---- the commands ----

void do_hello() {
  board_id = (uint8_t)args[0];
  out_begin("HELLO");
  out_u32(board_id);
  out_str(" " FW_NAME);
  out_u32(FW_VERSION);
  out_u32(MAX_FEATURES);
  out_end();
}

void do_train() {
  uint32_t features = args[4];
  if (features < 1 || features > MAX_FEATURES || features != nfeat) {
    reply_err(" features");
    return;
  }
  if (args[0] < 1 || args[2] < 1 || args[3] < 1 || args[3] > MAX_BATCH) {
    reply_err(" token");
    return;
  }
  lr = bits_to_float(args[1]);
  n_samples = args[2];
  batch_size = args[3];
  per_epoch = (n_samples + batch_size - 1) / batch_size;
  total_batches = args[0] * per_epoch;
  next_seq = 0;
  train_samples = 0;
  training = true;
  set_led(true);
  out_begin("OK TRAIN");
  out_u32(total_batches);
  out_end();
}

uint32_t expected_count(uint32_t seq) {
  uint32_t k = seq % per_epoch;
  return k == per_epoch - 1 ? n_samples - k * batch_size : batch_size;
}

// A batch is applied once: a resend of the last applied one is acknowledged, not applied.
void do_batch() {
  uint32_t seq = args[0], count = args[1];
  if (!training) {
    reply_err(" idle");
  } else if (seq == next_seq && next_seq < total_batches) {
    if (count != expected_count(seq) || got != count) {
      reply_nak(" count");
      return;
    }
    apply_batch(count);
    next_seq++;
    train_samples += count;
    samples_seen += count;
    batches_applied++;
    set_led(!led_on);
    out_begin("ACK");
    out_u32(seq);
    out_end();
  } else if (seq + 1 == next_seq) {
    out_begin("ACK");
    out_u32(seq);
    out_end();
  } else {
    reply_nak(" seq");
  }
}

void do_done() {
  training = false;
  set_led(false);
  out_begin("DONE");
  out_u32(next_seq);
  out_u32(train_samples);
  out_end();
}

void do_getw() {
  out_begin("W");
  out_u32(nfeat);
  out_char(' ');
  for (uint8_t j = 0; j < nfeat; j++) out_float(w[j]);
  out_float(b);
  out_end();
}

void do_setw() {
  if (training) {
    reply_err(" busy");
    return;
  }
  nfeat = (uint8_t)args[0];
  for (uint8_t j = 0; j < nfeat; j++) w[j] = stage[j];
  b = stage[nfeat];
  out_begin("OK SETW");
  out_u32(nfeat);
  out_end();
}

void do_pred() {
  float z = logit(stage);
  float p = sigmoid(z);
  out_begin("P ");
  out_float(z);
  out_char(' ');
  out_float(p);
  out_u32(p >= 0.5f ? 1 : 0);
  out_end();
}

int free_ram() {
  extern int __heap_start, *__brkval;
  int top;
  return (int)&top - (__brkval == 0 ? (int)&__heap_start : (int)__brkval);
}

void do_stat() {
  out_begin("STAT");
  out_u32((uint32_t)free_ram());
  out_u32(samples_seen);
  out_u32(batches_applied);
  out_u32(naks);
  out_u32(training ? 1 : 0);
  out_end();
}

// Arguments each command needs; fewer or more is a malformed line.
uint8_t arg_count(char c) {
  switch (c) {
    case 'H': return 1;
    case 'T': return 5;
    case 'S': return 2;
    case 'R': return 1;
  }
  return 0;
}

void dispatch() {
  if (cmd == '?') {
    reply_err(" unknown");
    return;
  }
  // The first problem found is the one reported.
  bool batch_ok = cmd == 'B' && (uint32_t)tok_index == 3 + got && tok_index >= 3;
  bool words_ok = cmd == 'B' ? batch_ok : tok_index == (uint16_t)(1 + arg_count(cmd));
  if (!bad && cmd == 'R' && nfeat == 0) bad = BAD_FEATURES;
  if (!bad && !words_ok) bad = BAD_TOKEN;
  if (bad) {
    if (cmd == 'B') reply_nak(reason_word(bad));
    else reply_err(reason_word(bad));
    return;
  }
  switch (cmd) {
    case 'H': do_hello(); break;
    case 'P': out_begin("PONG"); out_end(); break;
    case 'T': do_train(); break;
    case 'B': do_batch(); break;
    case 'D': do_done(); break;
    case 'G': do_getw(); break;
    case 'S': do_setw(); break;
    case 'R': do_pred(); break;
    case 'A': do_stat(); break;
  }
}

void end_line() {
  if (!in_crc && tok_index == 0 && tok_len == 0) return;  // an empty line
  if (!in_crc || crc_digits != 4) {
    reply_nak(" frame");
  } else if (crc_rx != crc) {
    reply_nak(" crc");
  } else {
    dispatch();
  }
}

void on_char(char c) {
  if (c == '\r') return;
  if (c == '\n') {
    end_line();
    reset_line();
    return;
  }
  if (in_crc) {
    int8_t v = hex_value(c);
    if (v < 0 || crc_digits >= 4) crc_digits = 5;  // never 4: a frame error
    else crc_rx = (uint16_t)((crc_rx << 4) | (uint8_t)v), crc_digits++;
    return;
  }
  if (c == '*') {
    end_token();
    in_crc = true;
    return;
  }
  crc = crc16_step(crc, (uint8_t)c);
  if (c == ' ') end_token();
  else token_char(c);
}

// Idle sleep until the next interrupt (a received byte, or timer 0's millisecond tick); sei
// then sleep run as a pair, so a byte that arrives in between still wakes the loop.
void wait_for_byte() {
  set_sleep_mode(SLEEP_MODE_IDLE);
  cli();
  if (Serial.available() == 0) {
    sleep_enable();
    sei();
    sleep_cpu();
    sleep_disable();
  }
  sei();
}

void setup() {
  pinMode(LED_PIN, OUTPUT);
  set_led(false);
  Serial.begin(EDGE_BAUD);
  reset_line();
  out_begin("BOOT " FW_NAME);
  out_u32(FW_VERSION);
  out_end();
}

void loop() {
  while (Serial.available() > 0) on_char((char)Serial.read());
  wait_for_byte();
}
