#include "launcher/cli/cli.h"

int main(int argc, char **argv)
{
    return qvisor_main(argc, argv);
}
