/*
 * A hostile guest for the nested `garbage` check: a bare PVH "kernel" (32-bit protected
 * mode, paging off, no Linux) that attacks hull-vmm's virtio-mmio devices. The guest
 * kernel has no /dev/mem, so this is how a guest gets raw access to the registers and to
 * the memory the queues live in.
 *
 * Each of ROUNDS rounds, for each device slot at 0xd0000000 + n * 0x1000 (n < DEVICES):
 *   - drives the status handshake (ACK, DRIVER, the offered features, FEATURES_OK), points
 *     queue q of device n at its own 12 KiB of the 256 KiB garbage region at 16 MiB
 *     (descriptors, avail ring, used ring; in RAM, so the transport accepts them and the
 *     device starts on them) with a random QueueNum, and sets DRIVER_OK. The reset first
 *     stops the previous round's worker, so every round activates each device anew (and
 *     the random writes below reset devices at random too);
 *   - writes RANDOM_WRITES random values to random registers (QueueNotify with any index,
 *     status, selectors, ...) and reads random config-space bytes.
 * Then it fills the garbage region (but the used rings) with descriptor-shaped noise: addresses mostly in
 * 16..32 MiB (where, outside the region, zeroed RAM reads as IN/sector-0 block headers),
 * sometimes above 4 GiB; lengths mostly < 64 KiB, sometimes any; random NEXT/WRITE flags,
 * sometimes INDIRECT; next indexes < 32. Each avail ring gets an index of its used index
 * plus 0..511 (often a plausible number of new entries) and head indexes below 256, so
 * many chains get past the ring checks into the devices' parsers. Then it notifies every
 * queue.
 *
 * It prints "GARBAGE-START", then "GARBAGE-USED" with each queue's used index (hex; how
 * many chains the devices returned) and "GARBAGE-END" on COM1, and triple-faults (an
 * empty IDT and int3), which hull-vmm reports as a guest reset. Build: see build.sh.
 */
#define ROUNDS 150
#define DEVICES 3
#define RANDOM_WRITES 8
#define REGION 0x01000000
#define REGION_SIZE 0x40000

    .code32
    .section .text
    .globl _start
_start:
    cli
    mov $0x90000, %esp
    mov $0x9e3779b9, %esi          /* xorshift32 state */
    mov $msg_start, %ebx
    call puts
    mov $ROUNDS, %ebp
round:
    mov $0xd0000000, %edi
device:
    call setup_device
    mov $RANDOM_WRITES, %ecx
1:  call rand
    and $0xfc, %eax                /* any 32-bit register below the config space */
    push %eax
    call rand
    pop %edx
    mov %eax, (%edi,%edx)
    call rand                      /* and a byte read somewhere in the config space */
    and $0xff, %eax
    movb 0x100(%edi,%eax), %dl
    loop 1b
    add $0x1000, %edi
    cmp $(0xd0000000 + DEVICES * 0x1000), %edi
    jb device

    call scribble
    call fix_avail

    mov $0xd0000000, %edi
2:  movl $0, 0x50(%edi)            /* QueueNotify 0, 1, 2 */
    movl $1, 0x50(%edi)
    movl $2, 0x50(%edi)
    add $0x1000, %edi
    cmp $(0xd0000000 + DEVICES * 0x1000), %edi
    jb 2b

    dec %ebp
    jnz round

    call print_used
    mov $msg_end, %ebx
    call puts
    lidt empty_idt
    int3                            /* no IDT: #GP, #DF, triple fault -> reset */
    hlt

/* Status handshake and queue setup for the device at %edi. */
setup_device:
    movl $0, 0x70(%edi)            /* reset: an active device stops its worker */
    movl $1, 0x70(%edi)            /* ACKNOWLEDGE */
    movl $3, 0x70(%edi)            /* DRIVER */
    movl $0, 0x14(%edi)            /* DeviceFeaturesSel 0 */
    mov 0x10(%edi), %eax
    movl $0, 0x24(%edi)
    mov %eax, 0x20(%edi)           /* accept what is offered */
    movl $1, 0x14(%edi)
    mov 0x10(%edi), %eax
    movl $1, 0x24(%edi)
    mov %eax, 0x20(%edi)
    movl $0xb, 0x70(%edi)          /* FEATURES_OK */
    xor %ebx, %ebx
3:  mov %ebx, 0x30(%edi)           /* QueueSel */
    call rand
    and $0x1ff, %eax               /* QueueNum: often not a power of two */
    mov %eax, 0x38(%edi)
    call queue_base                /* %eax = this queue's 12 KiB */
    mov %eax, 0x80(%edi)           /* QueueDescLow */
    movl $0, 0x84(%edi)
    add $0x1000, %eax
    mov %eax, 0x90(%edi)           /* QueueDriverLow */
    movl $0, 0x94(%edi)
    add $0x1000, %eax
    mov %eax, 0xa0(%edi)           /* QueueDeviceLow */
    movl $0, 0xa4(%edi)
    movl $1, 0x44(%edi)            /* QueueReady */
    inc %ebx
    cmp $3, %ebx
    jb 3b
    movl $0xf, 0x70(%edi)          /* DRIVER_OK */
    ret

/* %eax = REGION + ((device of %edi) * 3 + queue %ebx) * 0x3000. */
queue_base:
    mov %edi, %eax
    sub $0xd0000000, %eax
    shr $12, %eax                  /* device number */
    imul $3, %eax
    add %ebx, %eax
    imul $0x3000, %eax
    add $REGION, %eax
    ret

/* Plausible avail rings for all DEVICES * 3 queues: flags 0, idx = the device's used idx
 * plus 0..511 (often a valid number of new entries, else too many), heads < 256. */
fix_avail:
    mov $(REGION + 0x1000), %edi
9:  movw $0, (%edi)
    call rand
    and $0x1ff, %eax
    addw 0x1002(%edi), %ax         /* the used index + up to 511 new entries */
    movw %ax, 2(%edi)
    xor %ecx, %ecx
10: call rand
    and $0xff, %eax
    movw %ax, 4(%edi,%ecx,2)
    inc %ecx
    cmp $256, %ecx
    jb 10b
    add $0x3000, %edi
    cmp $(REGION + 0x1000 + DEVICES * 3 * 0x3000), %edi
    jb 9b
    ret

/* Prints "GARBAGE-USED" and each queue's used idx in hex. */
print_used:
    mov $msg_used, %ebx
    call puts
    mov $(REGION + 0x2000), %edi
11: movzwl 2(%edi), %esi           /* the rand state is not needed any more */
    mov $0x3f8, %dx
    mov $32, %al          /* ' ' */
    outb %al, %dx
    mov $4, %ecx
12: rol $4, %si
    mov %esi, %eax
    and $0xf, %eax
    movb hex(%eax), %al
    outb %al, %dx
    loop 12b
    add $0x3000, %edi
    cmp $(REGION + 0x2000 + DEVICES * 3 * 0x3000), %edi
    jb 11b
    mov $10, %al          /* '\n' */
    outb %al, %dx
    ret

/* Fills the garbage region, but the used rings, with descriptor-shaped noise. */
scribble:
    mov $REGION, %edi
4:  mov %edi, %eax                 /* leave the used rings to the devices */
    sub $REGION, %eax
    shr $12, %eax
    cmp $(DEVICES * 3 * 3), %eax
    jae 14f
    xor %edx, %edx
    mov $3, %ecx
    div %ecx
    cmp $2, %edx
    jne 14f
    add $16, %edi
    jmp 15f
14: call rand
    and $0x00fffff0, %eax
    or $0x01000000, %eax
    mov %eax, (%edi)               /* addr low: 16..32 MiB */
    call rand
    cmp $0x20000000, %eax          /* 1/8: any high half */
    jb 5f
    xor %eax, %eax
5:  mov %eax, 4(%edi)
    call rand
    test $0x7, %al                 /* 1/8: any length */
    jz 6f
    and $0xffff, %eax
6:  mov %eax, 8(%edi)
    call rand
    mov %eax, %edx
    and $0x001f0003, %eax          /* flags NEXT|WRITE, next < 32 */
    test $0x700, %edx              /* 1/8: INDIRECT too */
    jnz 13f
    or $4, %eax
13: mov %eax, 12(%edi)
    add $16, %edi
15: cmp $(REGION + REGION_SIZE), %edi
    jb 4b
    mov $0xd0000000, %edi          /* restore the device pointer for the caller */
    ret

/* xorshift32: %esi = %eax = next value. */
rand:
    mov %esi, %eax
    shl $13, %eax
    xor %eax, %esi
    mov %esi, %eax
    shr $17, %eax
    xor %eax, %esi
    mov %esi, %eax
    shl $5, %eax
    xor %eax, %esi
    mov %esi, %eax
    ret

/* Writes the NUL-terminated string at %ebx to COM1. */
puts:
    mov $0x3f8, %dx
7:  movb (%ebx), %al
    test %al, %al
    jz 8f
    outb %al, %dx
    inc %ebx
    jmp 7b
8:  ret

    .section .rodata
msg_start: .asciz "GARBAGE-START\n"
msg_end:   .asciz "GARBAGE-END\n"
msg_used:  .asciz "GARBAGE-USED"
hex:       .ascii "0123456789abcdef"
    .align 8
empty_idt: .word 0
           .long 0

/* The PVH entry point, for hull-vmm's loader (XEN_ELFNOTE_PHYS32_ENTRY). */
    .section .note.pvh, "a", @note
    .align 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .long _start
