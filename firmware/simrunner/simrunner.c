/*
 * simrunner: one simulated Arduino Uno per process, on simavr.
 *
 * Loads a firmware ELF (ATmega328P at 16 MHz unless told otherwise), connects UART0 to a new
 * pseudo-terminal and prints its path as the first line on stdout, so the host opens it as it
 * would /dev/ttyACM0. Counts the LED's toggles (PB5, Arduino pin 13). On SIGTERM, SIGINT or
 * SIGHUP, or when the firmware stops, prints one line of totals and exits:
 *
 *   simrunner: cycles=N simulated_s=S led_toggles=T bytes_in=I bytes_out=O dropped=D state=X
 *
 * usage: simrunner [-m MCU] [-f HZ] FIRMWARE.elf
 *
 * Time: while the host is talking to the board (bytes pending either way, or the CPU awake)
 * the simulation runs as fast as it can; while the board sleeps with nothing to do, simulated
 * time is held to the wall clock, so an idle board costs almost no CPU.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "avr_ioport.h"
#include "avr_uart.h"
#include "sim_avr.h"
#include "sim_elf.h"
#include "sim_time.h"

// The UART's input FIFO accessors (static inlines the header only declares).
DEFINE_FIFO(uint16_t, uart_fifo);

static volatile sig_atomic_t stopping;

static uint8_t in_buf[1 << 16];  // host -> board, waiting for room in the UART
static size_t in_head, in_len;
static uint8_t out_buf[1 << 12];  // board -> host, waiting for room in the pty
static size_t out_len;
static uint64_t bytes_in, bytes_out, dropped, led_toggles;
static uint32_t led_level;

static void on_signal(int sig) { stopping = sig; }

static void on_uart_output(struct avr_irq_t *irq, uint32_t value, void *param) {
    (void)irq;
    (void)param;
    if (out_len < sizeof out_buf)
        out_buf[out_len++] = (uint8_t)value;
    else
        dropped++;  // nobody reads the pty: a real board's bytes are lost the same way
}

static void on_led(struct avr_irq_t *irq, uint32_t value, void *param) {
    (void)irq;
    (void)param;
    if ((value != 0) != (led_level != 0))
        led_toggles++;
    led_level = value;
}

// The main loop paces itself (see the top); simavr's own sleep would sleep in real time.
static void no_sleep(avr_t *avr, avr_cycle_count_t how_long) {
    (void)avr;
    (void)how_long;
}

// stdout carries the pty path and the totals only; simavr's errors and warnings go to stderr.
static void log_to_stderr(avr_t *avr, const int level, const char *format, va_list ap) {
    (void)avr;
    if (level <= LOG_WARNING)
        vfprintf(stderr, format, ap);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static avr_uart_t *find_uart0(avr_t *avr) {
    for (avr_io_t *io = avr->io_port; io; io = io->next)
        if (io->kind && strcmp(io->kind, "uart") == 0 && ((avr_uart_t *)io)->name == '0')
            return (avr_uart_t *)io;
    return NULL;
}

// A pty in raw mode (no echo, no line editing). The runner keeps the slave side open itself,
// so the master never reports a hang-up between two hosts' sessions.
static int open_pty(char *path, size_t size, int *keeper) {
    int fd = posix_openpt(O_RDWR | O_NOCTTY);
    if (fd < 0 || grantpt(fd) || unlockpt(fd) || ptsname_r(fd, path, size))
        return -1;
    *keeper = open(path, O_RDWR | O_NOCTTY);
    if (*keeper < 0)
        return -1;
    struct termios tio;
    tcgetattr(*keeper, &tio);
    cfmakeraw(&tio);
    tcsetattr(*keeper, TCSANOW, &tio);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

// Bytes go into the UART only while its receiver is on and its FIFO has room: simavr drops
// what arrives otherwise, as a real UART would before Serial.begin.
static void feed_uart(avr_t *avr, avr_uart_t *uart, avr_irq_t *input) {
    while (in_head < in_len && avr_regbit_get(avr, uart->rxen) &&
           !uart_fifo_isfull(&uart->input)) {
        avr_raise_irq(input, in_buf[in_head++]);
        bytes_in++;
    }
}

// Moves bytes both ways; returns whether any moved.
static int pump_io(avr_t *avr, avr_uart_t *uart, avr_irq_t *input, int fd) {
    int moved = 0;
    if (in_head == in_len) {
        in_head = in_len = 0;
    } else if (in_head > sizeof in_buf / 2) {
        memmove(in_buf, in_buf + in_head, in_len - in_head);
        in_len -= in_head;
        in_head = 0;
    }
    ssize_t n = read(fd, in_buf + in_len, sizeof in_buf - in_len);
    if (n > 0) {
        in_len += (size_t)n;
        moved = 1;
    }
    feed_uart(avr, uart, input);
    if (out_len) {
        n = write(fd, out_buf, out_len);
        if (n > 0) {
            memmove(out_buf, out_buf + n, out_len - (size_t)n);
            out_len -= (size_t)n;
            bytes_out += (uint64_t)n;
            moved = 1;
        }
    }
    return moved;
}

// Idle: hold simulated time to the wall clock, waking early when the host writes.
static void pace(avr_t *avr, uint64_t anchor_ns, avr_cycle_count_t anchor_cycle, int fd) {
    uint64_t sim_ns = anchor_ns + avr_cycles_to_nsec(avr, avr->cycle - anchor_cycle);
    uint64_t now = now_ns();
    if (sim_ns <= now)
        return;
    uint64_t wait = sim_ns - now;
    struct timespec ts = {(time_t)(wait / 1000000000u), (long)(wait % 1000000000u)};
    struct pollfd p = {fd, POLLIN, 0};
    ppoll(&p, 1, &ts, NULL);
}

static int idle(avr_uart_t *uart, int state) {
    return state == cpu_Sleeping && in_head == in_len && out_len == 0 &&
           uart_fifo_isempty(&uart->input);
}

static int run(avr_t *avr, avr_uart_t *uart, int fd) {
    avr_irq_t *input = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_INPUT);
    uint64_t anchor_ns = now_ns();
    avr_cycle_count_t anchor_cycle = avr->cycle;
    int state = cpu_Running;
    while (!stopping) {
        for (int i = 0; i < 2000 && state != cpu_Done && state != cpu_Crashed; i++)
            state = avr_run(avr);
        if (state == cpu_Done || state == cpu_Crashed)
            break;
        int moved = pump_io(avr, uart, input, fd);
        if (moved || !idle(uart, state)) {
            anchor_ns = now_ns();
            anchor_cycle = avr->cycle;
        } else {
            pace(avr, anchor_ns, anchor_cycle, fd);
        }
    }
    return state;
}

static const char *state_name(int state) {
    return state == cpu_Done ? "done" : state == cpu_Crashed ? "crashed" : "stopped";
}

static avr_t *load(const char *elf, const char *mcu, uint32_t hz) {
    static elf_firmware_t fw;
    avr_global_logger_set(log_to_stderr);
    if (elf_read_firmware(elf, &fw)) {
        fprintf(stderr, "simrunner: cannot read %s\n", elf);
        return NULL;
    }
    if (!fw.mmcu[0])
        snprintf(fw.mmcu, sizeof fw.mmcu, "%s", mcu);
    if (!fw.frequency)
        fw.frequency = hz;
    avr_t *avr = avr_make_mcu_by_name(fw.mmcu);
    if (!avr) {
        fprintf(stderr, "simrunner: simavr does not know the MCU %s\n", fw.mmcu);
        return NULL;
    }
    avr_init(avr);
    avr_load_firmware(avr, &fw);
    avr->sleep = no_sleep;
    return avr;
}

static void connect_parts(avr_t *avr) {
    uint32_t flags = 0;
    // No usleep on every status poll, no echo of the UART to our stdout.
    avr_ioctl(avr, AVR_IOCTL_UART_GET_FLAGS('0'), &flags);
    flags &= ~(uint32_t)(AVR_UART_FLAG_POLL_SLEEP | AVR_UART_FLAG_STDIO);
    avr_ioctl(avr, AVR_IOCTL_UART_SET_FLAGS('0'), &flags);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUTPUT),
                            on_uart_output, NULL);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('B'), IOPORT_IRQ_PIN5),
                            on_led, NULL);
}

static void on_exit_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
}

int main(int argc, char **argv) {
    const char *mcu = "atmega328p";
    uint32_t hz = 16000000;
    int opt;
    while ((opt = getopt(argc, argv, "m:f:")) != -1) {
        if (opt == 'm')
            mcu = optarg;
        else if (opt == 'f')
            hz = (uint32_t)strtoul(optarg, NULL, 10);
        else
            return 2;
    }
    if (optind != argc - 1) {
        fprintf(stderr, "usage: simrunner [-m MCU] [-f HZ] FIRMWARE.elf\n");
        return 2;
    }
    // No orphans: die with the process that started us, even if it is killed.
    pid_t parent = getppid();
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
        return 1;
    on_exit_signals();
    avr_t *avr = load(argv[optind], mcu, hz);
    avr_uart_t *uart = avr ? find_uart0(avr) : NULL;
    if (!uart)
        return 1;
    connect_parts(avr);
    char path[256];
    int keeper;
    int fd = open_pty(path, sizeof path, &keeper);
    if (fd < 0) {
        perror("simrunner: pty");
        return 1;
    }
    printf("%s\n", path);
    fflush(stdout);
    int state = run(avr, uart, fd);
    printf("simrunner: cycles=%llu simulated_s=%.6f led_toggles=%llu bytes_in=%llu "
           "bytes_out=%llu dropped=%llu state=%s\n",
           (unsigned long long)avr->cycle, (double)avr->cycle / avr->frequency,
           (unsigned long long)led_toggles, (unsigned long long)bytes_in,
           (unsigned long long)bytes_out, (unsigned long long)dropped, state_name(state));
    fflush(stdout);
    close(keeper);
    close(fd);
    return state == cpu_Crashed ? 1 : 0;
}
